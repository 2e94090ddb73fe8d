"""`modelyard stats`, `modelyard feedback` and `modelyard workers`: what the routers have
seen, as tables, and a user's score of a request."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from rich.table import Table

from modelyard.bearer import bearer_metadata
from modelyard.cli.connect import (
    PLAINTEXT,
    ApiKeyOpt,
    open_channel,
    tls_options,
)
from modelyard.cli.output import cli_errors, print_json, print_table
from modelyard.durations import parse_duration
from modelyard.errors import InvalidArgument, from_rpc_error
from modelyard.tls import TlsSettings
from modelyard.v1 import router_pb2, router_pb2_grpc, worker_pb2

RouterOpt = Annotated[
    str, typer.Option("--router", envvar="MODELYARD_ROUTER", help="Router host:port.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]

_BREAKER = {
    router_pb2.BREAKER_STATE_CLOSED: "closed",
    router_pb2.BREAKER_STATE_HALF_OPEN: "[yellow]half-open[/yellow]",
    router_pb2.BREAKER_STATE_OPEN: "[red]open[/red]",
}


def _traffic_columns(table: Table) -> None:
    for name in ("requests", "errors", "tokens in", "tokens out", "cost $", "saved $"):
        table.add_column(name, justify="right")
    for name in ("TTFT p50/p95/p99 ms", "total p50/p95/p99 ms", "feedback"):
        table.add_column(name, justify="right")


def _traffic_cells(t: router_pb2.TrafficStats) -> list[str]:
    def pct(s: router_pb2.LatencySummary) -> str:
        return f"{s.p50_ms:.0f}/{s.p95_ms:.0f}/{s.p99_ms:.0f}"

    feedback = f"{t.mean_feedback_score:.2f} (n={t.feedback_count})" if t.feedback_count else "-"
    return [
        str(t.requests),
        str(t.errors),
        str(t.input_tokens),
        str(t.output_tokens),
        f"{t.cost_usd:.6f}",
        f"{t.savings_usd:.6f}",
        pct(t.ttft),
        pct(t.total_latency),
        feedback,
    ]


@tls_options
def stats(
    router: RouterOpt = "127.0.0.1:50050",
    model: Annotated[str, typer.Option(help="Only this model (name or name@version).")] = "",
    route: Annotated[str, typer.Option(help="Only this route's arms.")] = "",
    since: Annotated[
        str, typer.Option(help="Only the last 30s, 15m, 1h, 7d...; default: all retained.")
    ] = "",
    json: JsonOpt = False,
    api_key: ApiKeyOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Per-model and per-A/B-arm traffic, latency, cost and feedback of the whole mesh (every
    router replica, as the registry keeps them); this router's alone when the registry is
    away, and the output says so."""
    with cli_errors():
        try:
            window = parse_duration(since) if since else 0
        except ValueError as err:
            raise InvalidArgument.for_field("--since", str(err)) from None
    with cli_errors(), open_channel(router, tls) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).GetRoutingStats(
                router_pb2.GetRoutingStatsRequest(model=model, route=route, window_seconds=window),
                timeout=10,
                metadata=bearer_metadata(api_key),
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
    if json:
        print_json(reply)
        return
    scope = "mesh-wide" if reply.mesh_wide else "this router only (the registry is unreachable)"
    if since:
        scope += f", last {since}"
    if reply.outcomes_dropped:
        scope += f"; {reply.outcomes_dropped} outcomes dropped before the registry stored them"
    models = Table(title=f"models ({scope})")
    models.add_column("model")
    _traffic_columns(models)
    for m in reply.models:
        models.add_row(f"{m.model}@{m.version}", *_traffic_cells(m.traffic))
    print_table(models)
    if reply.arms:
        arms = Table(title="route arms")
        for name in ("route", "arm", "model"):
            arms.add_column(name)
        _traffic_columns(arms)
        for a in reply.arms:
            arms.add_row(a.route, a.arm, a.model, *_traffic_cells(a.traffic))
        print_table(arms)


@tls_options
def feedback(
    request_id: Annotated[str, typer.Argument(help="The request's id (GenerationStarted).")],
    score: Annotated[float, typer.Argument(help="Any scale you keep consistent, e.g. 0..1.")],
    comment: Annotated[str, typer.Option(help="Up to 2 KiB of text kept with the score.")] = "",
    router: RouterOpt = "127.0.0.1:50050",
    api_key: ApiKeyOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Score a finished request, on any router replica; a request takes one score."""
    with cli_errors(), open_channel(router, tls) as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).RecordFeedback(
                router_pb2.RecordFeedbackRequest(
                    request_id=request_id, score=score, comment=comment
                ),
                timeout=30,
                metadata=bearer_metadata(api_key),
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
    typer.echo(f"feedback recorded for {request_id}")


@tls_options
def workers(
    router: RouterOpt = "127.0.0.1:50050",
    json: JsonOpt = False,
    api_key: ApiKeyOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """The router's workers: health, breaker, memory, queue and where models are warm."""
    with cli_errors(), open_channel(router, tls) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).ListWorkers(
                router_pb2.ListWorkersRequest(), timeout=10, metadata=bearer_metadata(api_key)
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
    if json:
        print_json(reply)
        return
    table = Table(title="workers")
    for name in ("worker", "address", "healthy", "breaker", "memory MiB", "queued tok", "running"):
        table.add_column(name, justify="right" if name[0] in "mqr" else "left")
    table.add_column("models")
    for w in reply.workers:
        s = w.status
        models = ", ".join(
            f"{m.name}@{m.version}:{worker_pb2.ResidencyState.Name(m.state).removeprefix('RESIDENCY_STATE_').lower()}"
            for m in s.models
        )
        table.add_row(
            w.worker_id or "-",
            w.address,
            "yes" if w.healthy else "[red]no[/red]",
            _BREAKER.get(w.breaker, "closed"),
            f"{s.memory_used_bytes >> 20}/{s.memory_budget_bytes >> 20}",
            str(s.queued_tokens),
            str(s.running_sequences),
            models or "-",
        )
    print_table(table)
