"""`modelyard up`: the whole mesh on this machine with the bundled SmolLM2."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.table import Table

from modelyard.bundled import BundledModelMissing, smollm2_model
from modelyard.cli.generate import print_stream
from modelyard.cli.load import load_with_progress
from modelyard.cli.output import cli_errors, console, err_console, print_table
from modelyard.client import Client
from modelyard.errors import AlreadyExists, from_rpc_error
from modelyard.local_mesh import LocalMesh, ServiceFailed, port_is_free
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    worker_pb2,
)

DEFAULT_PROMPT = "In two sentences, what is a large language model?"
DEMO_SYSTEM = "You are a helpful assistant."
HTTP_PORT_OFFSET = 30  # the OpenAI-compatible front: 50080 next to the router's 50050


_BasePortOpt = Annotated[
    int,
    typer.Option(
        help="Router on this port, registry on +1, worker on +2, the router's "
        "OpenAI-compatible HTTP front on +30 (http://127.0.0.1:50080/v1 by default). "
        "0 picks free ports."
    ),
]

_DirectOpt = Annotated[
    bool,
    typer.Option(
        "--direct-streams",
        help="Let clients stream from the worker the router picks (the SDK's "
        "Client.generate(..., direct=True)): a fresh ticket key pair in --data-dir/tickets "
        "and a reporter token for the worker's outcome reports.",
    ),
]


def up(
    prompt: Annotated[
        str, typer.Option(help="The demo prompt streamed once the mesh is up ('' to skip).")
    ] = DEFAULT_PROMPT,
    once: Annotated[
        bool, typer.Option("--once", help="Stop everything after the demo generation.")
    ] = False,
    base_port: _BasePortOpt = 50050,
    data_dir: Annotated[Path, typer.Option(help="Registry database and service logs.")] = Path(
        "~/.modelyard"
    ),
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the worker's llama.cpp engine.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens for the demo answer.")] = 128,
    direct_streams: _DirectOpt = False,
) -> None:
    """Start registry (SQLite) + one worker serving SmolLM2 + router on loopback.

    Registers the bundled SmolLM2-135M-Instruct as `smollm2-135m-instruct`, loads it,
    streams a demo answer, then serves until Ctrl-C (or exits with --once). The router
    also answers OpenAI's API on base port + 30 (http://127.0.0.1:50080/v1 by default).
    """
    try:
        model = smollm2_model()
    except BundledModelMissing as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from err
    mesh = _local_mesh(data_dir.expanduser(), base_port, threads, direct_streams)
    # SIGTERM ends `up` like Ctrl-C does, so the children are always stopped. SIGINT is
    # set too: a shell starts background jobs with it ignored, and Python keeps that.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with console.status("starting registry, worker and router..."):
            mesh.start()
        _show_addresses(mesh)
        with cli_errors():
            _register_and_load(mesh, model)
            if prompt:
                _demo(mesh.router_address, model.name, prompt, max_tokens, direct=direct_streams)
        if not once:
            console.print(
                f"\nServing. Try: [bold]modelyard generate --router {mesh.router_address} "
                f'--model {model.name} "Hello!"[/bold]   (Ctrl-C stops)'
            )
            _wait_until_interrupted(mesh)
    except ServiceFailed as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from err
    except KeyboardInterrupt:
        console.print("\nstopping...")
    finally:
        mesh.stop()
    console.print("[dim]all services stopped[/dim]")


def _local_mesh(
    data_dir: Path, base_port: int, threads: int | None, direct_streams: bool = False
) -> LocalMesh:
    """The mesh on base_port's neighbours, or a clear exit when one of them is taken."""
    offsets = (0, 1, 2, HTTP_PORT_OFFSET)  # router, registry, worker, OpenAI front
    ports = [base_port + o for o in offsets] if base_port else [0] * len(offsets)
    busy = [p for p in ports if p and not port_is_free(p)]
    if busy:
        err_console.print(
            f"[red]port(s) {', '.join(map(str, busy))} already in use[/red]: "
            "is another `modelyard up` running? Use --base-port N, or 0 for free ports."
        )
        raise typer.Exit(1)
    return LocalMesh(
        data_dir=data_dir,
        router_port=ports[0],
        registry_port=ports[1],
        worker_ports=[ports[2]],
        worker_threads=threads,
        router_http_port=ports[3],
        direct_streams=direct_streams,
    )


def _show_addresses(mesh: LocalMesh) -> None:
    table = Table("service", "address", "log", title="modelyard is up", title_justify="left")
    for service in mesh.services:
        table.add_row(service.name, service.address, str(service.log_path))
        if service.name == "router" and mesh.router_http_address is not None:
            table.add_row(
                "router (OpenAI HTTP)",
                f"http://{mesh.router_http_address}/v1",
                str(service.log_path),
            )
    print_table(table)


def _register_and_load(mesh: LocalMesh, model: model_pb2.Model) -> None:
    with grpc.insecure_channel(mesh.registry_address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        try:
            reply = stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model), timeout=30)
        except grpc.RpcError as err:
            error = from_rpc_error(err)
            if isinstance(error, AlreadyExists):
                # Only a data dir from before bundled:// URIs holds another record of it.
                raise AlreadyExists(
                    f"{model.name}@{model.version} is registered in {mesh.data_dir} with another "
                    f"artifact (an older modelyard registered it by its path). Start with a new "
                    f"--data-dir, or remove {mesh.data_dir / 'registry.db'} to register it again."
                ) from err
            raise error from err
        verb = "registered" if reply.created else "already registered"
        console.print(f"{verb} [bold]{model.name}@{model.version}[/bold] ({model.artifact.uri})")
    worker = mesh.worker_addresses[0]
    console.print(f"loading {model.name} on {worker}...")
    started = time.monotonic()
    load_with_progress(
        worker,
        # By reference: the worker resolves it in the registry it was started with.
        worker_pb2.LoadModelRequest(
            model=model_pb2.Model(name=model.name, version=model.version),
            engine=common_pb2.ENGINE_LLAMA_CPP,
        ),
        timeout_s=300,
    )
    console.print(f"loaded {model.name} in {time.monotonic() - started:.1f} s")


def _demo(router: str, model: str, prompt: str, max_tokens: int, *, direct: bool = False) -> None:
    """Stream one answer through the router (direct: from the worker it picks)."""
    console.print(f"\n[bold cyan]you>[/bold cyan] {prompt}")
    console.print(f"[bold green]{model}>[/bold green] ", end="")
    with Client(router, timeout_s=120) as client:
        stream = client.generate(
            model=model,
            messages=[
                common_pb2.ChatMessage(role="system", content=DEMO_SYSTEM),
                common_pb2.ChatMessage(role="user", content=prompt),
            ],
            max_tokens=max_tokens,
            temperature=0.0,
            direct=direct,
        )
        print_stream(stream)


def _wait_until_interrupted(mesh: LocalMesh) -> None:
    """Sleep until Ctrl-C; leave early (with the log tail) if a service dies."""
    stop = threading.Event()
    while not stop.wait(1.0):
        for service in mesh.services:
            if service.process.poll() is not None:
                raise ServiceFailed(
                    f"{service.name} exited with code {service.process.returncode}; "
                    f"log {service.log_path}:\n{service.log_tail()}"
                )
