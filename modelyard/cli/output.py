"""Terminal output shared by the commands: one console, errors in one shape."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from rich.console import Console

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
        err_console.print(f"[red]{err.code.name}[/red]: {err.message}", highlight=False)
        for v in err.violations:
            err_console.print(f"  field {v.field}: {v.description}", highlight=False)
        raise typer.Exit(1) from err
