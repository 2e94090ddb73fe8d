"""The CLI's exit codes and its plain JSON output, as a shell sees them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from modelyard.cli.output import print_json
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
    )


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
    # call when the interrupt comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        port = silent.getsockname()[1]
        proc = _modelyard(*args, flag, f"127.0.0.1:{port}")
        try:
            conn, _ = silent.accept()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            conn.close()
        finally:
            proc.kill()
    assert proc.returncode == 130, err
