"""`modelyard routes ...`: named entry points with weighted A/B arms and fallbacks.

A route comes from flags, a YAML/JSON file (`-f route.yaml`: name, arms:
[{name, model, weight}], fallbacks, stickySessions, defaultObjective, maxTtftMs,
maxCostPer1kTokens, responseCache: {enabled, ttlSeconds, perApiKey}, rollout: {canaryArm,
baselineArm, stepsPercent, ...}), or both: flags override the file. The rollout flags and
`routes rollout` live in `routes_rollout.py`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelyard.cli import routes_rollout as rollout
from modelyard.cli.connect import (
    PLAINTEXT,
    AdminTokenOpt,
    RegistryTokenOpt,
    tls_options,
)
from modelyard.cli.models import (
    FileOpt,
    JsonOpt,
    RegistryOpt,
    call,
    enum_value,
    load_message,
    read_token,
    registry_stub,
    short,
)
from modelyard.cli.output import cli_errors, console, print_json, print_table
from modelyard.errors import InvalidArgument
from modelyard.tls import TlsSettings
from modelyard.v1 import common_pb2, model_pb2, registry_pb2

app = typer.Typer(help="Routes: A/B arms, stickiness and fallbacks over models.")


def parse_arm(text: str) -> model_pb2.RouteArm:
    """'[name:]model=weight', e.g. 'control:smollm2@1=90' or 'smollm2@2=10'."""
    spec, sep, weight = text.rpartition("=")
    if not sep:
        spec, weight = text, "1"
    label, _, model = spec.rpartition(":")
    try:
        return model_pb2.RouteArm(name=label, model=model, weight=float(weight))
    except ValueError as err:
        raise InvalidArgument.for_field("--arm", f"{text!r}: use [name:]model=weight") from err


CacheOpt = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache",
        help="Answer repeated deterministic requests (temperature 0 or a seed) from the "
        "router's response cache.",
    ),
]
CacheTtlOpt = Annotated[
    int | None,
    typer.Option("--cache-ttl", help="Seconds a cached answer lives (0: 300; at most 86400)."),
]
CachePerKeyOpt = Annotated[
    bool | None,
    typer.Option("--cache-per-key/--cache-shared", help="Keep each API key's answers apart."),
]


def set_response_cache(
    policy: model_pb2.ResponseCachePolicy,
    enabled: bool | None,
    ttl_seconds: int | None,
    per_api_key: bool | None,
) -> None:
    """Apply the cache flags that were given over what the file said."""
    if enabled is not None:
        policy.enabled = enabled
    if ttl_seconds is not None:
        if ttl_seconds < 0:
            raise InvalidArgument.for_field("--cache-ttl", f"must be >= 0, got {ttl_seconds}")
        policy.ttl_seconds = ttl_seconds
    if per_api_key is not None:
        policy.per_api_key = per_api_key


def describe_cache(policy: model_pb2.ResponseCachePolicy) -> str:
    if not policy.enabled:
        return "off"
    scope = "per API key" if policy.per_api_key else "shared by all keys"
    return f"on, ttl {policy.ttl_seconds or 300} s, {scope}"


MaxOutputTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-output-tokens",
        min=0,
        help="Ceiling on the output of requests without max_tokens; 0: none.",
    ),
]


@app.command("put")
@tls_options
def put(
    file: FileOpt = None,
    name: Annotated[str | None, typer.Option(help="Route name (not a model's name).")] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(help="[name:]model=weight, e.g. control:smollm2@1=90; repeatable."),
    ] = None,
    fallback: Annotated[
        list[str] | None, typer.Option(help="Fallback model or route, in order; repeatable.")
    ] = None,
    sticky: Annotated[
        bool | None, typer.Option("--sticky/--no-sticky", help="Same session key, same arm.")
    ] = None,
    objective: Annotated[
        str | None, typer.Option(help="Default objective: balanced|cost|latency|load.")
    ] = None,
    max_ttft_ms: Annotated[
        float | None, typer.Option(help="Ceiling on time to first token.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Ceiling in USD per 1k tokens.")
    ] = None,
    max_output_tokens: MaxOutputTokensOpt = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    cache: CacheOpt = None,
    cache_ttl: CacheTtlOpt = None,
    cache_per_key: CachePerKeyOpt = None,
    rollout_canary: rollout.CanaryOpt = None,
    rollout_baseline: rollout.BaselineOpt = None,
    rollout_steps: rollout.StepsOpt = None,
    rollout_min_seconds: rollout.MinSecondsOpt = None,
    rollout_min_requests: rollout.MinRequestsOpt = None,
    max_error_rate_increase: rollout.ErrorRateOpt = None,
    max_ttft_p95_ratio: rollout.TtftRatioOpt = None,
    max_cost_ratio: rollout.CostRatioOpt = None,
    min_feedback_delta: rollout.FeedbackOpt = None,
    promote: rollout.PromoteOpt = None,
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    json_out: JsonOpt = False,
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Create or replace a route (with --rollout-*: a staged canary rollout)."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        route = load_message(file, model_pb2.Route())
        _apply_flags(route, name, arm, fallback, sticky, objective, description)
        if max_ttft_ms is not None:
            route.max_ttft_ms = max_ttft_ms
        if max_cost is not None:
            route.max_cost_per_1k_tokens = max_cost
        if max_output_tokens is not None:
            route.max_output_tokens_ceiling = max_output_tokens
        set_response_cache(route.response_cache, cache, cache_ttl, cache_per_key)
        rollout.RolloutFlags.of(locals()).apply(route)
        reply = call(stub.PutRoute, registry_pb2.PutRouteRequest(route=route), admin_token)
    if not json_out:
        console.print(f"route {reply.route.name} stored (revision {reply.revision})")
    print_route(reply.route, json_out)


def _apply_flags(
    route: model_pb2.Route,
    name: str | None,
    arm: list[str] | None,
    fallback: list[str] | None,
    sticky: bool | None,
    objective: str | None,
    description: str | None,
) -> None:
    if name is not None:
        route.name = name
    if arm:
        route.ClearField("arms")
        route.arms.extend(parse_arm(a) for a in arm)
    if fallback:
        route.fallbacks[:] = fallback
    if sticky is not None:
        route.sticky_sessions = sticky
    if objective is not None:
        route.default_objective = common_pb2.Objective.ValueType(
            enum_value(common_pb2.Objective, "OBJECTIVE_", objective, "--objective")
        )
    if description is not None:
        route.description = description


app.command("rollout")(rollout.control_rollout)


@app.command("list")
@tls_options
def list_routes(
    registry: RegistryOpt = "127.0.0.1:50051",
    json_out: JsonOpt = False,
    registry_token: RegistryTokenOpt = "",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """List routes."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        reply = call(
            stub.ListRoutes,
            registry_pb2.ListRoutesRequest(),
            read_token(registry_token, admin_token),
        )
    if json_out:
        for route in reply.routes:
            print_json(route)
        return
    table = Table("name", "arms", "fallbacks", "sticky", "objective")
    for route in reply.routes:
        table.add_row(
            route.name,
            ", ".join(f"{a.name}: {a.model} ({a.weight:g})" for a in route.arms),
            ", ".join(route.fallbacks) or "-",
            "yes" if route.sticky_sessions else "no",
            short(common_pb2.Objective, "OBJECTIVE_", route.default_objective),
        )
    print_table(table)


@app.command("show")
@tls_options
def show(
    name: Annotated[str, typer.Argument(help="Route name.")],
    registry: RegistryOpt = "127.0.0.1:50051",
    json_out: JsonOpt = False,
    registry_token: RegistryTokenOpt = "",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Show one route."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        route = call(
            stub.GetRoute,
            registry_pb2.GetRouteRequest(name=name),
            read_token(registry_token, admin_token),
        ).route
    print_route(route, json_out)


@app.command("delete")
@tls_options
def delete(
    name: Annotated[str, typer.Argument(help="Route name.")],
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Delete a route (refused while another route falls back to it)."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        reply = call(stub.DeleteRoute, registry_pb2.DeleteRouteRequest(name=name), admin_token)
    console.print(f"deleted route {name} (revision {reply.revision})")


def print_route(route: model_pb2.Route, json_out: bool) -> None:
    if json_out:
        print_json(route)
        return
    total = sum(a.weight for a in route.arms) or 1.0
    table = Table("arm", "model", "weight", "share", title=f"route {route.name}")
    for a in route.arms:
        table.add_row(a.name, a.model, f"{a.weight:g}", f"{100 * a.weight / total:.1f}%")
    print_table(table)
    details = [
        ("fallbacks", " -> ".join(route.fallbacks) or "-"),
        ("sticky sessions", "yes" if route.sticky_sessions else "no"),
        ("objective", short(common_pb2.Objective, "OBJECTIVE_", route.default_objective)),
        ("max ttft", f"{route.max_ttft_ms:g} ms" if route.HasField("max_ttft_ms") else "-"),
        (
            "max cost",
            f"{route.max_cost_per_1k_tokens:g} USD/1k"
            if route.HasField("max_cost_per_1k_tokens")
            else "-",
        ),
        (
            "max output",
            f"{route.max_output_tokens_ceiling} tokens without max_tokens"
            if route.max_output_tokens_ceiling
            else "-",
        ),
        ("response cache", describe_cache(route.response_cache)),
        ("updated", route.updated_at.ToJsonString()),
    ]
    for key, value in details:
        console.print(f"{key}: {value}", highlight=False)
    rollout.print_rollout(route)
