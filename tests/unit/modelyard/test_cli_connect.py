"""The CLI's TLS options refuse, before dialling, what would silently drop a certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli.main import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    return result.exit_code, " ".join(result.output.split())


def test_a_certificate_needs_its_key_and_files_must_be_readable(tmp_path: Path) -> None:
    cert = tmp_path / "me.crt"
    cert.write_text("not checked before the key")
    code, out = run("models", "list", "--tls-cert", str(cert))
    assert code == 2 and "needs --tls-key" in out, out
    code, out = run("workers", "--tls-key", str(cert))
    assert code == 2 and "needs --tls-cert" in out, out
    code, out = run("models", "unload", "m@1", "--tls-ca", str(tmp_path / "missing.crt"))
    assert code == 2 and "is not a readable file" in out, out
    code, out = run("routes", "list", "--tls-server-name", "registry")
    assert code == 2 and "TLS is off" in out, out


def _options(command: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    # Typer's own (vendored) click types: read by shape.
    for name, sub in getattr(command, "commands", {}).items():
        yield from _options(sub, f"{path} {name}".strip())
    for param in command.params:
        yield path, param


@pytest.mark.parametrize(
    ("flag", "server_variable"),
    [
        ("--admin-token", "MODELYARD_REGISTRY_ADMIN_TOKEN"),
        ("--operator-token", "MODELYARD_WORKER_ADMIN_TOKEN"),
    ],
)
def test_token_flags_also_read_the_servers_own_variable(flag: str, server_variable: str) -> None:
    found = [(p, o) for p, o in _options(typer.main.get_command(app)) if flag in o.opts]
    assert found, flag
    for path, option in found:
        assert server_variable in (option.envvar or ()), path
