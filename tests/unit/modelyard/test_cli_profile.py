"""Connection contexts from the config file: the context fills in what flags and the
environment leave unset, and a broken file is a usage error that names the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard.local_mesh import free_port


def _config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def _modelyard(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "MODELYARD_CONFIG": str(config), "COLUMNS": "300", **env},
        check=False,
    )


@pytest.fixture
def addresses() -> dict[str, str]:
    return {name: f"127.0.0.1:{free_port()}" for name in ("prod", "local", "flag", "env")}


def test_the_current_context_then_env_then_flag_win_in_that_order(
    tmp_path: Path, addresses: dict[str, str]
) -> None:
    config = _config(
        tmp_path,
        {
            "current-context": "prod",
            "contexts": {
                "prod": {"registry": addresses["prod"]},
                "local": {"registry": addresses["local"]},
            },
        },
    )
    assert addresses["prod"] in _modelyard(config, "models", "list").stderr
    assert addresses["local"] in _modelyard(config, "--context", "local", "models", "list").stderr
    assert (
        addresses["local"] in _modelyard(config, "models", "list", MODELYARD_CONTEXT="local").stderr
    )
    env = _modelyard(config, "models", "list", MODELYARD_REGISTRY=addresses["env"])
    assert addresses["env"] in env.stderr
    flag = _modelyard(
        config,
        "models",
        "list",
        "--registry",
        addresses["flag"],
        MODELYARD_REGISTRY=addresses["env"],
    )
    assert addresses["flag"] in flag.stderr


@pytest.mark.parametrize(
    ("data", "args", "says"),
    [
        ({"contexts": {"a": {"registry": "x:1"}}}, ("--context", "b"), "has no context 'b'"),
        ({"contexts": {"a": {"registy": "x:1"}}}, ("--context", "a"), "unknown key(s) registy"),
        ({"contexts": []}, (), "expected a 'contexts' mapping"),
    ],
    ids=["missing-context", "misspelt-key", "not-a-mapping"],
)
def test_a_broken_config_is_a_usage_error_naming_the_problem(
    tmp_path: Path, data: object, args: tuple[str, ...], says: str
) -> None:
    done = _modelyard(_config(tmp_path, data), *args, "models", "list")
    assert done.returncode == 2, done.stderr
    assert says in " ".join(done.stderr.split())


def test_a_readable_token_file_warns(tmp_path: Path, addresses: dict[str, str]) -> None:
    config = _config(
        tmp_path,
        {
            "current-context": "a",
            "contexts": {"a": {"registry": addresses["prod"], "admin-token": "t"}},
        },
    )
    config.chmod(0o644)
    assert "others can read it" in _modelyard(config, "models", "list").stderr
