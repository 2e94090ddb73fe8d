"""`modelyard models ...`: the registry's catalogue of model versions.

Writes (register, stage, delete) send the admin token, when given, as
`authorization: Bearer <token>`; reads (list, show) send the reader token
(`--registry-token`), else the admin token; TLS/mTLS options: see `connect.py`.
A model comes from flags, a YAML/JSON file (`-f model.yaml`, keys as in the proto's
JSON form: name, version, artifact: {uri, sha256, format}, capabilities: {chat,
contextLength, tags}, ...), or both: flags override the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer
import yaml
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from rich.table import Table

from modelyard.cli.connect import (
    PLAINTEXT,
    AdminTokenOpt,
    RegistryTokenOpt,
    open_channel,
    tls_options,
)
from modelyard.cli.output import cli_errors, console, print_json, print_table
from modelyard.errors import InvalidArgument, from_rpc_error
from modelyard.tls import TlsSettings
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, registry_pb2_grpc

app = typer.Typer(help="The model catalogue in the registry.")

M = TypeVar("M", bound=Message)
R = TypeVar("R")

RegistryOpt = Annotated[
    str,
    typer.Option("--registry", envvar="MODELYARD_REGISTRY", help="Registry host:port."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]
FileOpt = Annotated[
    Path | None,
    typer.Option("-f", "--file", help="YAML or JSON file, keys as in the proto's JSON form."),
]


@contextmanager
def registry_stub(
    address: str, tls: TlsSettings
) -> Iterator[registry_pb2_grpc.RegistryServiceStub]:
    with open_channel(address, tls) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


def read_token(registry_token: str, admin_token: str) -> str:
    """What a read sends: the reader token, else the admin's (the admin may read too)."""
    return registry_token or admin_token


def call(rpc: Callable[..., R], request: Message, token: str = "", timeout: float = 30) -> R:
    """One unary call; a failure becomes the domain error that `cli_errors` prints."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        return rpc(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err


def load_message(path: Path | None, message: M) -> M:
    """Fill `message` from a YAML or JSON file (JSON is YAML too)."""
    if path is None:
        return message
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InvalidArgument.for_field(str(path), f"cannot read: {err}") from err
    if not isinstance(data, dict):
        raise InvalidArgument.for_field(str(path), "must hold a mapping of fields")
    try:
        ParseDict(data, message)
    except ParseError as err:
        raise InvalidArgument.for_field(str(path), str(err)) from err
    return message


def enum_value(enum: Any, prefix: str, text: str, field: str) -> int:
    """'production' -> STAGE_PRODUCTION's number, with the choices in the error."""
    key = f"{prefix}{text.strip().upper().replace('-', '_')}"
    try:
        return int(enum.Value(key))
    except ValueError as err:
        keys: list[str] = list(enum.keys())  # a protobuf enum wrapper, not a dict
        names = [k.removeprefix(prefix).lower() for k in keys if not k.endswith("UNSPECIFIED")]
        raise InvalidArgument.for_field(
            field, f"{text!r} is not one of {', '.join(names)}"
        ) from err


def short(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument.for_field("--label", f"{pair!r}: use key=value")
        labels[key] = value
    return labels


@app.command("list")
@tls_options
def list_models(
    registry: RegistryOpt = "127.0.0.1:50051",
    name: Annotated[str, typer.Option(help="Only versions of this model.")] = "",
    stage: Annotated[str, typer.Option(help="Only this stage: staging|production|archived.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="Only with this tag; repeatable.")] = None,
    selector: Annotated[
        str, typer.Option("--selector", "-l", help="Label selector, e.g. team=search,tier!=free.")
    ] = "",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
    registry_token: RegistryTokenOpt = "",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """List registered model versions."""
    models: list[model_pb2.Model] = []
    with cli_errors(), registry_stub(registry, tls) as stub:
        stage_value = enum_value(model_pb2.Stage, "STAGE_", stage, "--stage") if stage else 0
        token = ""
        while True:
            page = call(
                stub.ListModels,
                registry_pb2.ListModelsRequest(
                    name=name,
                    stage=model_pb2.Stage.ValueType(stage_value),
                    tags=tag or [],
                    label_selector=selector,
                    page_token=token,
                    page_size=500,
                ),
                read_token(registry_token, admin_token),
            )
            models += page.models
            token = page.next_page_token
            if not token:
                break
    if json_out:
        for m in models:
            print_json(m)
        return
    table = Table("name", "version", "stage", "engines", "context", "chat", "artifact")
    for m in models:
        table.add_row(
            m.name,
            m.version,
            short(model_pb2.Stage, "STAGE_", m.stage),
            ",".join(short(common_pb2.Engine, "ENGINE_", e) for e in m.engines) or "any",
            str(m.capabilities.context_length or "-"),
            "yes" if m.capabilities.chat else "no",
            m.artifact.uri,
        )
    print_table(table)


@app.command("show")
@tls_options
def show(
    ref: Annotated[str, typer.Argument(help="name or name@version (bare: newest production).")],
    registry: RegistryOpt = "127.0.0.1:50051",
    json_out: JsonOpt = False,
    registry_token: RegistryTokenOpt = "",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Show one model version."""
    name, _, version = ref.partition("@")
    with cli_errors(), registry_stub(registry, tls) as stub:
        model = call(
            stub.GetModel,
            registry_pb2.GetModelRequest(name=name, version=version),
            read_token(registry_token, admin_token),
        ).model
    print_model(model, json_out)


_UriOpt = Annotated[str | None, typer.Option(help="Artifact URI: file://, https://, s3://, hf://")]
_Sha256Opt = Annotated[str | None, typer.Option(help="Artifact sha256 (hex).")]
_ContextOpt = Annotated[int | None, typer.Option(help="Context window in tokens.")]
_TagOpt = Annotated[list[str] | None, typer.Option(help="Capability tag; repeatable.")]
_FormatOpt = Annotated[str | None, typer.Option("--format", help="gguf or hf.")]
_EngineOpt = Annotated[
    list[str] | None, typer.Option(help="Allowed engine, in preference order; repeatable.")
]
_CompletionOpt = Annotated[
    bool | None, typer.Option("--completion/--no-completion", help="Supports completion.")
]


def _set_scalars(model: model_pb2.Model, values: dict[str, str | int | bool | None]) -> None:
    """Set each dotted field path whose flag was given (None: keep the file's value)."""
    for path, value in values.items():
        if value is None:
            continue
        *parents, leaf = path.split(".")
        target: Any = model
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)


def _set_enums(
    model: model_pb2.Model,
    artifact_format: str | None,
    stage: str | None,
    engines: list[str] | None,
) -> None:
    if artifact_format is not None:
        model.artifact.format = model_pb2.ArtifactFormat.ValueType(
            enum_value(model_pb2.ArtifactFormat, "ARTIFACT_FORMAT_", artifact_format, "--format")
        )
    if stage is not None:
        model.stage = model_pb2.Stage.ValueType(
            enum_value(model_pb2.Stage, "STAGE_", stage, "--stage")
        )
    if engines:
        model.engines[:] = [
            common_pb2.Engine.ValueType(enum_value(common_pb2.Engine, "ENGINE_", e, "--engine"))
            for e in engines
        ]


@app.command("register")
@tls_options
def register(
    file: FileOpt = None,
    name: Annotated[str | None, typer.Option(help="Model name.")] = None,
    version: Annotated[str | None, typer.Option(help="Version, e.g. 1 or 2024-11-01.")] = None,
    uri: _UriOpt = None,
    sha256: _Sha256Opt = None,
    artifact_format: _FormatOpt = None,
    engine: _EngineOpt = None,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Supports chat.")] = None,
    completion: _CompletionOpt = None,
    context_length: _ContextOpt = None,
    tag: _TagOpt = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value label; repeatable.")] = None,
    stage: Annotated[str | None, typer.Option(help="staging (default) or production.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    json_out: JsonOpt = False,
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Register a model version (idempotent: the same content again changes nothing)."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        model = load_message(file, model_pb2.Model())
        _set_scalars(
            model,
            {
                "name": name,
                "version": version,
                "description": description,
                "artifact.uri": uri,
                "artifact.sha256": sha256,
                "capabilities.chat": chat,
                "capabilities.completion": completion,
                "capabilities.context_length": context_length,
            },
        )
        _set_enums(model, artifact_format, stage, engine)
        if tag:
            model.capabilities.tags[:] = tag
        model.labels.update(parse_labels(label or []))
        reply = call(
            stub.RegisterModel, registry_pb2.RegisterModelRequest(model=model), admin_token
        )
    if not json_out:
        what = "registered" if reply.created else "already registered (identical)"
        console.print(
            f"{what} {reply.model.name}@{reply.model.version} at revision {reply.revision}"
        )
    print_model(reply.model, json_out)


@app.command("stage")
@tls_options
def stage(
    ref: Annotated[str, typer.Argument(help="name@version")],
    to: Annotated[str, typer.Argument(help="staging, production or archived.")],
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    json_out: JsonOpt = False,
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Move a version to another stage."""
    name, _, version = ref.partition("@")
    with cli_errors(), registry_stub(registry, tls) as stub:
        value = model_pb2.Stage.ValueType(enum_value(model_pb2.Stage, "STAGE_", to, "stage"))
        reply = call(
            stub.SetStage,
            registry_pb2.SetStageRequest(name=name, version=version, stage=value),
            admin_token,
        )
    if json_out:
        print_json(reply)
    else:
        console.print(f"{ref} is {to.lower()} (revision {reply.revision})")


@app.command("delete")
@tls_options
def delete(
    ref: Annotated[str, typer.Argument(help="name@version")],
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Delete a version (refused while a route uses it)."""
    name, _, version = ref.partition("@")
    with cli_errors(), registry_stub(registry, tls) as stub:
        reply = call(
            stub.DeleteModel,
            registry_pb2.DeleteModelRequest(name=name, version=version),
            admin_token,
        )
    console.print(f"deleted {ref} (revision {reply.revision})")


def print_model(model: model_pb2.Model, json_out: bool) -> None:
    if json_out:
        print_json(model)
        return
    table = Table("field", "value", show_header=False)
    caps = model.capabilities
    rows = [
        ("model", f"{model.name}@{model.version}"),
        ("stage", short(model_pb2.Stage, "STAGE_", model.stage)),
        ("artifact", model.artifact.uri),
        ("sha256", model.artifact.sha256 or "-"),
        ("format", short(model_pb2.ArtifactFormat, "ARTIFACT_FORMAT_", model.artifact.format)),
        (
            "engines",
            ",".join(short(common_pb2.Engine, "ENGINE_", e) for e in model.engines) or "any",
        ),
        ("chat / completion", f"{caps.chat} / {caps.completion}"),
        ("context", str(caps.context_length or "-")),
        ("tags", ",".join(caps.tags) or "-"),
        ("labels", ",".join(f"{k}={v}" for k, v in sorted(model.labels.items())) or "-"),
        ("created", model.created_at.ToJsonString()),
        ("updated", model.updated_at.ToJsonString()),
    ]
    if model.description:
        rows.append(("description", model.description))
    for key, value in rows:
        table.add_row(key, value)
    print_table(table)
