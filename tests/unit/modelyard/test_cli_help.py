"""`--help` as a user sees it, through the console script's entry point."""

from __future__ import annotations

import os
import subprocess
import sys


def _help(*command: str, columns: int = 80) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_flags_show_no_value_type_and_prose_is_not_broken_mid_sentence() -> None:
    text = _help("up")
    assert "<bool>" not in text  # a flag takes no value
    assert "--once" in text and "<int>" in text  # options with values keep their type
    # On a wide terminal a paragraph is one line: the docstring's own line breaks join.
    wide = _help("up", columns=240)
    assert any(
        "Registers the bundled" in line and "The router also answers" in line
        for line in wide.splitlines()
    )


def test_every_command_help_hides_flag_types() -> None:
    for command in (("generate",), ("models", "load"), ("routes", "put"), ("router", "serve")):
        assert "<bool>" not in _help(*command), command
