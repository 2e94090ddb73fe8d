"""`modelyard eval`: run a JSONL prompt set against models or route arms through the
router, score the answers, and print means with 95% confidence intervals, cost and
latency per model version (docs/evaluation.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import grpc
import typer
from rich.progress import Progress

from modelyard.cli.connect import PLAINTEXT, AdminTokenOpt, ApiKeyOpt, open_channel, tls_options
from modelyard.cli.output import cli_errors, console, err_console, print_table
from modelyard.client_connection import DEFAULT_ADDRESS, Connection
from modelyard.errors import InvalidArgument, from_rpc_error
from modelyard.evaluation import report
from modelyard.evaluation.dataset import Dataset, load_dataset
from modelyard.evaluation.mesh import RouterMesh, Sampling
from modelyard.evaluation.metrics import Metric, MetricContext
from modelyard.evaluation.runner import resolve_targets, run
from modelyard.evaluation.scoring import group_answers, score_all, select_metrics
from modelyard.tls import TlsSettings
from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc

TargetOpt = Annotated[
    list[str],
    typer.Option(
        "--target",
        "-t",
        help='Repeatable: a model "name" or "name@version", a route (answers grouped by the '
        'arm that served them) or "ROUTE:ARM" (that arm\'s model alone). Differences are '
        "to the first.",
    ),
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        "-m",
        help="Repeatable: exact_match, regex, json_schema, rouge_l, embedding_similarity, "
        "judge. Default: each of the first three that some case can be scored by.",
    ),
]
RouterOpt = Annotated[
    str, typer.Option("--router", envvar="MODELYARD_ROUTER", help="Router host:port.")
]
RegistryOpt = Annotated[
    str,
    typer.Option("--registry", envvar="MODELYARD_REGISTRY", help="Registry host:port (--record)."),
]
OutcomeTokenOpt = Annotated[
    str,
    typer.Option(
        "--outcome-token",
        envvar="MODELYARD_OUTCOME_TOKEN",
        help="A registry outcome-writer token for --record (else --admin-token).",
        show_default=False,
        rich_help_panel="Security",
    ),
]
RegexMode = Literal["search", "fullmatch"]


@dataclass(frozen=True)
class Plan:
    dataset: Dataset
    targets: list[str]
    metrics: list[Metric]
    sampling: Sampling
    context: MetricContext
    embedding_model: str
    judge_model: str
    concurrency: int
    seed: int


@tls_options
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="JSONL prompt set, one case a line.")],
    target: TargetOpt,
    metric: MetricOpt = None,
    router: RouterOpt = DEFAULT_ADDRESS,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.0,
    chat_mode: Annotated[
        bool, typer.Option("--chat/--completion", help="A `prompt` as a user message or raw.")
    ] = True,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 4,
    timeout: Annotated[float, typer.Option(help="Deadline of each request, seconds.")] = 120.0,
    normalize: Annotated[
        bool, typer.Option(help="exact_match ignores case and whitespace runs.")
    ] = True,
    regex_mode: Annotated[str, typer.Option(help="regex: search or fullmatch.")] = "search",
    embedding_model: Annotated[str, typer.Option(help="Model for embedding_similarity.")] = "",
    judge_model: Annotated[str, typer.Option(help="Model that judges answers (judge).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap intervals.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
    record: Annotated[bool, typer.Option(help="Store the run in the registry.")] = False,
    run_id: Annotated[str, typer.Option(help="Id of the stored run (default: a UUID).")] = "",
    registry: RegistryOpt = "127.0.0.1:50051",
    api_key: ApiKeyOpt = "",
    admin_token: AdminTokenOpt = "",
    outcome_token: OutcomeTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Evaluate models or route arms offline on a prompt set, with confidence intervals."""
    with cli_errors():
        if regex_mode not in ("search", "fullmatch"):
            raise InvalidArgument.for_field("--regex-mode", "use search or fullmatch")
        data = load_dataset(dataset)
        try:
            metrics = select_metrics(metric or [], data.cases)
        except ValueError as err:
            raise InvalidArgument.for_field("--metric", str(err)) from None
        _check_mesh_models(metrics, embedding_model, judge_model)
        mode: RegexMode = "fullmatch" if regex_mode == "fullmatch" else "search"
        plan = Plan(
            dataset=data,
            targets=target,
            metrics=metrics,
            sampling=Sampling(max_tokens, temperature, timeout, chat_mode),
            context=MetricContext(normalize=normalize, regex_mode=mode),
            embedding_model=embedding_model,
            judge_model=judge_model,
            concurrency=concurrency,
            seed=seed,
        )
        if len(run_id) > 128:
            raise InvalidArgument.for_field("--run-id", "at most 128 characters")
        rows = asyncio.run(_evaluate(plan, _connection(router, tls, api_key)))
        run_id = run_id or str(uuid.uuid4())
        _show(run_id, data, rows, metrics, json_out)
        if record:  # after the figures, so a refused write does not lose them
            _record(report.to_run(run_id, data, rows), registry, tls, outcome_token or admin_token)
            err_console.print(f"[dim]recorded as run {run_id}[/dim]", highlight=False)


def _check_mesh_models(metrics: list[Metric], embedding_model: str, judge_model: str) -> None:
    names = {m.name for m in metrics}
    if "embedding_similarity" in names and not embedding_model:
        raise InvalidArgument.for_field("--embedding-model", "embedding_similarity needs it")
    if "judge" in names and not judge_model:
        raise InvalidArgument.for_field("--judge-model", "judge needs it")


def _connection(router: str, tls: TlsSettings, api_key: str) -> Connection:
    return Connection(
        address=router,
        api_key=api_key,
        tls_ca_file=tls.ca_file,
        tls_cert_file=tls.cert_file,
        tls_key_file=tls.key_file,
        tls_server_name=tls.server_name,
    )


async def _evaluate(plan: Plan, connection: Connection) -> list[report.GroupFigures]:
    mesh = RouterMesh(connection)
    try:
        targets = await resolve_targets(plan.targets, mesh)
        cases = plan.dataset.cases
        with _progress(len(cases) * len(targets)) as tick:
            answers = await run(
                cases, targets, mesh, plan.sampling, concurrency=plan.concurrency, progress=tick
            )
        ctx = _with_mesh(plan, mesh)
        scores = await score_all(answers, cases, plan.metrics, ctx, concurrency=plan.concurrency)
    finally:
        await mesh.close()
    groups = group_answers(answers, targets, scores, plan.metrics)
    return report.figures(groups, plan.metrics, plan.seed)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[], None] | None]:
    """A transient progress bar on stderr when it is a terminal (nothing in pipes, CI)."""
    if not err_console.is_terminal:
        yield None
        return
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("generating", total=total)
        yield lambda: bar.advance(task)


def _with_mesh(plan: Plan, mesh: RouterMesh) -> MetricContext:
    """The context with the mesh calls the chosen metrics need."""
    timeout = plan.sampling.timeout_s

    async def embed(texts: Sequence[str]) -> list[list[float]]:
        return await mesh.embed(plan.embedding_model, texts, timeout)

    async def judge(prompt: str) -> str:
        return await mesh.ask(plan.judge_model, prompt, timeout)

    return MetricContext(
        normalize=plan.context.normalize,
        regex_mode=plan.context.regex_mode,
        embed=embed if plan.embedding_model else None,
        judge=judge if plan.judge_model else None,
    )


def _record(run: outcomes_pb2.EvaluationRun, registry: str, tls: TlsSettings, token: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with open_channel(registry, tls) as channel:
        try:
            outcomes_pb2_grpc.OutcomeServiceStub(channel).RecordEvaluation(
                outcomes_pb2.RecordEvaluationRequest(run=run), timeout=30, metadata=metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err


def _show(
    run_id: str,
    data: Dataset,
    rows: list[report.GroupFigures],
    metrics: list[Metric],
    json_out: bool,
) -> None:
    if json_out:
        typer.echo(json.dumps(report.to_json(run_id, data, rows)))
        return
    console.print(
        f"{data.name} ({len(data.cases)} cases, sha256 {data.sha256[:12]}…), run {run_id}",
        highlight=False,
        markup=False,
    )
    for table in report.tables(rows, metrics):
        print_table(table)
