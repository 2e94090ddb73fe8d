"""`modelyard models ...`: read the registry's catalogue."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from rich.table import Table

from modelyard.cli.output import cli_errors, console, to_json
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, registry_pb2_grpc

app = typer.Typer(help="The model catalogue in the registry.")

RegistryOpt = Annotated[
    str,
    typer.Option("--registry", envvar="MODELYARD_REGISTRY", help="Registry host:port."),
]


@app.command("list")
def list_models(
    registry: RegistryOpt = "127.0.0.1:50051",
    name: Annotated[str, typer.Option(help="Only versions of this model.")] = "",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List registered model versions."""
    models: list[model_pb2.Model] = []
    with cli_errors(), grpc.insecure_channel(registry) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        token = ""
        while True:
            try:
                page = stub.ListModels(
                    registry_pb2.ListModelsRequest(name=name, page_token=token, page_size=500),
                    timeout=30,
                )
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            models += page.models
            token = page.next_page_token
            if not token:
                break
    if json_out:
        for m in models:
            console.print(to_json(m), highlight=False, soft_wrap=True)
        return
    table = Table("name", "version", "stage", "engines", "context", "chat", "artifact")
    for m in models:
        table.add_row(
            m.name,
            m.version,
            model_pb2.Stage.Name(m.stage).removeprefix("STAGE_").lower(),
            ",".join(common_pb2.Engine.Name(e).removeprefix("ENGINE_").lower() for e in m.engines)
            or "any",
            str(m.capabilities.context_length or "-"),
            "yes" if m.capabilities.chat else "no",
            m.artifact.uri,
        )
    console.print(table)
