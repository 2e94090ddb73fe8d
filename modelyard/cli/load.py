"""`modelyard models load|unload`: make a model warm on a worker, with a progress bar.

LoadModel is one unary call that returns once the model is warm; meanwhile the
worker publishes the load's phase and download bytes in its status, so this
follows WatchStatus on the same channel and draws them (`load_with_progress`,
also used by `modelyard up`).

LoadModel and UnloadModel send the operator token (`--operator-token`). WatchStatus and
GetStatus are the router's methods: on a worker that guards them the bar only spins, and
`unload` needs name@version (a bare name is looked up in the worker's status). A bare
name to `load` is resolved in the registry (`--registry-token`, else `--admin-token`);
name@version goes to the worker only, which resolves it in its own catalogue. Every dial
uses the same TLS options (`connect.py`).
"""

from __future__ import annotations

import threading
from typing import Annotated

import grpc
import typer
from google.protobuf import duration_pb2
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from modelyard.bearer import bearer_metadata
from modelyard.cli.connect import (
    PLAINTEXT,
    AdminTokenOpt,
    OperatorTokenOpt,
    RegistryTokenOpt,
    open_channel,
    tls_options,
)
from modelyard.cli.models import RegistryOpt, call, enum_value, read_token, registry_stub
from modelyard.cli.output import cli_errors, console
from modelyard.errors import FailedPrecondition, NotFound, from_rpc_error
from modelyard.tls import TlsSettings
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, worker_pb2, worker_pb2_grpc

WorkerOpt = Annotated[
    str,
    typer.Option("--worker", envvar="MODELYARD_WORKER", help="Worker host:port."),
]

PHASES = {
    "": "starting",
    "fetch": "finding the artifact",
    "download": "downloading",
    "verify": "verifying sha256",
    "load": "loading weights",
    "warm_up": "warming up",
}
WATCH_HEARTBEAT_S = 0.5
MiB = 1 << 20


def describe(status: worker_pb2.ModelStatus) -> tuple[str, str, int, int | None]:
    """(phase label, bytes text, completed, total or None for an indeterminate bar)."""
    label = PHASES.get(status.load_phase, status.load_phase)
    if status.load_phase != "download":
        return label, "", 0, None
    done, total = status.download_bytes_done, status.download_bytes_total
    if not total:
        return label, f"{done / MiB:.1f} MiB", done, None
    return label, f"{done / MiB:.1f}/{total / MiB:.1f} MiB", done, total


def load_with_progress(
    address: str,
    request: worker_pb2.LoadModelRequest,
    *,
    tls: TlsSettings | None = None,
    operator_token: str = "",
    out: Console | None = None,
    timeout_s: float = 1800.0,
) -> worker_pb2.LoadModelResponse:
    """Call LoadModel on `address` (as the operator, when `operator_token` is given),
    drawing the load's progress from WatchStatus meanwhile."""
    out = out if out is not None else console
    model = request.model
    ref = f"{model.name}@{model.version}"
    with open_channel(address, tls or TlsSettings()) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        heartbeat = duration_pb2.Duration()
        heartbeat.FromMilliseconds(int(WATCH_HEARTBEAT_S * 1000))
        watch = stub.WatchStatus(worker_pb2.WatchStatusRequest(heartbeat_interval=heartbeat))
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
        ) as bar:
            task = bar.add_task(f"{ref}: starting", total=None, detail="")
            follower = threading.Thread(
                target=_follow, args=(watch, model.name, model.version, bar, task), daemon=True
            )
            follower.start()
            future = stub.LoadModel.future(
                request, timeout=timeout_s, metadata=bearer_metadata(operator_token)
            )
            try:
                reply: worker_pb2.LoadModelResponse = future.result()
                return reply
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            finally:
                future.cancel()  # Ctrl-C: stop waiting (the worker finishes the load anyway)
                watch.cancel()
                follower.join(timeout=2.0)


def _follow(
    watch: grpc.CallIterator[worker_pb2.WatchStatusResponse],
    name: str,
    version: str,
    bar: Progress,
    task: TaskID,
) -> None:
    try:
        for update in watch:
            for m in update.status.models:
                if (m.name, m.version) != (name, version):
                    continue
                if m.state != worker_pb2.RESIDENCY_STATE_LOADING:
                    continue
                label, detail, done, total = describe(m)
                bar.update(
                    task,
                    description=f"{name}@{version}: {label}",
                    detail=detail,
                    completed=done,
                    total=total,
                )
    except grpc.RpcError:
        pass  # cancelled once the load returned, or the worker went away: LoadModel says which


@tls_options
def load(
    ref: Annotated[str, typer.Argument(help="name or name@version (bare: newest production).")],
    worker: WorkerOpt = "127.0.0.1:50052",
    registry: RegistryOpt = "127.0.0.1:50051",
    engine: Annotated[
        str, typer.Option(help="llama_cpp, vllm or transformers; default: the worker picks.")
    ] = "",
    pin: Annotated[bool, typer.Option("--pin", help="Never evict this model.")] = False,
    keep_alive: Annotated[
        float | None,
        typer.Option(help="Unload after this many idle seconds (0: never); default: worker's."),
    ] = None,
    operator_token: OperatorTokenOpt = "",
    registry_token: RegistryTokenOpt = "",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Load a registered model on a worker, showing download and load progress."""
    name, _, version = ref.partition("@")
    with cli_errors():
        if not version:  # the newest production version: the registry knows which
            with registry_stub(registry, tls) as stub:
                model = call(
                    stub.GetModel,
                    registry_pb2.GetModelRequest(name=name),
                    read_token(registry_token, admin_token),
                ).model
            name, version = model.name, model.version
        # The worker resolves name@version through its own catalogue: nothing else is read.
        request = worker_pb2.LoadModelRequest(
            model=model_pb2.Model(name=name, version=version), pin=pin
        )
        if engine:
            request.engine = common_pb2.Engine.ValueType(
                enum_value(common_pb2.Engine, "ENGINE_", engine, "--engine")
            )
        if keep_alive is not None:
            request.keep_alive.FromMilliseconds(int(keep_alive * 1000))
        reply = load_with_progress(worker, request, tls=tls, operator_token=operator_token)
    ref = f"{name}@{version}"
    engine_name = common_pb2.Engine.Name(reply.model.engine).removeprefix("ENGINE_").lower()
    memory = f"{reply.model.memory_bytes / MiB:.0f} MiB"
    if reply.loaded:
        console.print(
            f"loaded [bold]{ref}[/bold] on {worker} with {engine_name} "
            f"in {reply.load_ms / 1000:.1f} s ({memory}{', pinned' if reply.model.pinned else ''})"
        )
    else:
        console.print(f"[bold]{ref}[/bold] was already warm on {worker} ({engine_name}, {memory})")


@tls_options
def unload(
    ref: Annotated[str, typer.Argument(help="name@version, or a name loaded once on the worker.")],
    worker: WorkerOpt = "127.0.0.1:50052",
    grace: Annotated[
        float, typer.Option(help="Seconds in-flight requests may finish before cancelled.")
    ] = 30.0,
    operator_token: OperatorTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Drain and unload a model from a worker."""
    name, _, version = ref.partition("@")
    with cli_errors(), open_channel(worker, tls) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        if not version:
            version = _loaded_version(stub, name)
        request = worker_pb2.UnloadModelRequest(name=name, version=version)
        request.grace_period.FromMilliseconds(int(grace * 1000))
        reply = call(stub.UnloadModel, request, operator_token, timeout=grace + 60)
    cancelled = f", cancelled {reply.cancelled_requests}" if reply.cancelled_requests else ""
    console.print(
        f"unloaded [bold]{name}@{version}[/bold] from {worker} "
        f"(freed {reply.freed_bytes / MiB:.0f} MiB{cancelled})"
    )


def _loaded_version(stub: worker_pb2_grpc.WorkerServiceStub, name: str) -> str:
    reply: worker_pb2.GetStatusResponse = call(stub.GetStatus, worker_pb2.GetStatusRequest())
    status = reply.status
    held = (
        worker_pb2.RESIDENCY_STATE_LOADING,
        worker_pb2.RESIDENCY_STATE_WARM,
        worker_pb2.RESIDENCY_STATE_DRAINING,
    )
    versions: list[str] = sorted(
        {m.version for m in status.models if m.name == name and m.state in held}
    )
    if not versions:
        raise NotFound(f"no version of {name} is loaded on this worker")
    if len(versions) > 1:
        raise FailedPrecondition(
            f"{len(versions)} versions of {name} are loaded ({', '.join(versions)}): "
            "name one as name@version"
        )
    return versions[0]


def register(app: typer.Typer) -> None:
    """Add `load` and `unload` to the `models` sub-app."""
    app.command("load")(load)
    app.command("unload")(unload)
