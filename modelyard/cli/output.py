"""Terminal output shared by the commands: one console, errors in one shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import typer
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.errors import ModelyardError

console = Console()
err_console = Console(stderr=True)


def to_json(message: Message) -> str:
    return MessageToJson(message, indent=None, preserving_proto_field_name=True)


def print_json(message: Message) -> None:
    """One message as one line of plain JSON on stdout: no markup parsing (generated
    text such as `[/INST]` would be read as a Rich tag), no wrapping, no colour."""
    typer.echo(to_json(message))


@contextmanager
def cli_errors() -> Iterator[None]:
    """Print a service error as `CODE: message` (+ field violations) and exit 1."""
    try:
        yield
    except ModelyardError as err:
        message = _unreachable(err) or err.message
        # Server text may hold brackets (names, prompts): never read them as markup.
        err_console.print(f"[red]{err.code.name}[/red]: {escape(message)}", highlight=False)
        for v in err.violations:
            line = f"  field {escape(v.field)}: {escape(v.description)}"
            err_console.print(line, highlight=False)
        raise typer.Exit(1) from err


# gRPC's text when nothing listens: "failed to connect to all addresses; last error:
# UNKNOWN: ipv4:127.0.0.1:50050: Failed to connect to remote host: Connection refused".
_CONNECT_FAILED = "failed to connect to all addresses"
_TRIED = re.compile(r"ipv[46]:(\[[^\]]+\]:\d+|[^\s\[\]]+?:\d+)")


def _unreachable(err: ModelyardError) -> str | None:
    """What to do when the service cannot be reached, instead of gRPC's own text."""
    if err.code != grpc.StatusCode.UNAVAILABLE or _CONNECT_FAILED not in err.message:
        return None
    tried = _TRIED.search(err.message)
    where = tried.group(1) if tried else "the service"
    return (
        f"nothing answers at {where}. Start the mesh with `modelyard up`, or point the "
        "command at a running service (--router / --registry / --worker, or the "
        "MODELYARD_ROUTER / MODELYARD_REGISTRY / MODELYARD_WORKER variables)."
    )


def print_table(table: Table) -> None:
    """Print a table that fits the terminal without cutting a value: cells wrap (long
    words fold) instead of ending in "…", and the first column, the identifier, keeps
    its longest value on one line when it can."""
    for column in table.columns:
        column.overflow = "fold"
    if table.columns:
        first = table.columns[0]
        first.min_width = min(40, max((len(str(c)) for c in first.cells), default=0))
    console.print(table)
