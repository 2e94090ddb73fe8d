"""The CLI's exit codes and its plain JSON output, as a shell sees them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from rich.table import Table

from modelyard.cli import output
from modelyard.cli.output import cli_errors, print_json
from modelyard.errors import FieldViolation, NotFound
from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2


def test_json_output_is_plain_even_when_the_text_looks_like_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = "[INST] hi [/INST] [bold]x[/bold] [/]"  # Rich would parse (and reject) these tags
    print_json(common_pb2.TokenDelta(text=text, token_ids=[1, 2]))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == {"text": text, "token_ids": [1, 2]}


def _modelyard(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    # As a terminal's command gets it: a suite started in the background (`cmd &` in a
    # script, nohup) ignores SIGINT, children inherit that, and Python then never turns
    # Ctrl-C into KeyboardInterrupt (seen in CI-like runs: SigIgn had SIGINT set).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_usage_error_exits_2() -> None:
    proc = _modelyard("generate", "--no-such-flag")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "no-such-flag" in err


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("generate", "hello", "--model", "m"), "--router"), (("models", "list"), "--registry")],
    ids=["generate", "models-list"],
)
def test_ctrl_c_while_a_call_waits_exits_130(args: tuple[str, ...], flag: str) -> None:
    # A service that accepts the connection and never answers: the command is inside its
    # call when the interrupt comes. The port is not one bind(0) hands out, so no other
    # client still dialling a port from an earlier test connects here, and the connection
    # taken is checked to be the command's own.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", free_port()))
        silent.listen()
        silent.settimeout(60)
        port = silent.getsockname()[1]
        proc = _modelyard(*args, flag, f"127.0.0.1:{port}")
        conns: list[socket.socket] = []
        try:
            while True:
                conn, peer = silent.accept()
                conns.append(conn)
                if _socket_of(proc.pid, peer[1]):
                    break
            signals = _signal_masks(proc.pid)  # for the message, should SIGINT go unheard
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            for conn in conns:
                conn.close()
    assert proc.returncode == 130, f"{err}\nsignal masks at the interrupt: {signals}"


def _socket_of(pid: int, local_port: int) -> bool:
    """Whether process `pid` holds the TCP socket bound to 127.0.0.1:`local_port`."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC dials 127.0.0.1 v4-mapped
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == local_port and fields[9] in held:
                return True
    return False


def _signal_masks(pid: int) -> str:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return " ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list", "--registry"),
        ("workers", "--router"),
        ("models", "load", "m@1", "--worker"),
    ],
    ids=["registry", "router", "worker"],
)
def test_an_unreachable_service_names_the_address_and_what_to_start(args: tuple[str, ...]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = _modelyard(*args, address)
    _, err = proc.communicate(timeout=120)
    text = " ".join(err.split())
    assert proc.returncode == 1, err
    assert f"UNAVAILABLE: nothing answers at {address}" in text
    assert "modelyard up" in text
    assert "failed to connect to all addresses" not in text


def test_service_errors_print_brackets_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit), cli_errors():
        raise NotFound("model [/INST]@1 not found", violations=[FieldViolation("a[/b]", "[x]")])
    err = " ".join(capsys.readouterr().err.split())
    assert "NOT_FOUND: model [/INST]@1 not found" in err
    assert "field a[/b]: [x]" in err


def test_a_wide_table_at_80_columns_cuts_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Console(width=80, file=io.StringIO(), no_color=True)
    monkeypatch.setattr(output, "console", screen)
    table = Table("model", "version", "requests", "errors", "ttft p50", "ttft p95", "cost usd")
    table.add_row(
        "smollm2-135m-instruct", "q4_1-2024-11-01", "123456", "7", "812.5", "1934.2", "0.000123456"
    )
    output.print_table(table)
    text = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    assert "smollm2-135m-instruct" in text  # the identifier stays on one line
    assert max(len(line) for line in text.splitlines()) <= 80
