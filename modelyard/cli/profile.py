"""Named connection contexts, like kubeconfig's: every command's connection options from a
file, so a user switches between meshes with one name instead of a dozen flags.

    # ~/.config/modelyard/config.yaml (or $MODELYARD_CONFIG)
    current-context: prod
    contexts:
      prod:
        router: router.prod.example:50050
        registry: registry.prod.example:50051
        api-key: sk-...
        tls-ca: /etc/modelyard/ca.crt
      local:
        router: 127.0.0.1:50050

A flag wins over its environment variable, which wins over the context, which wins over the
built-in default (click's default_map sits exactly there).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
import yaml

CONFIG_ENV = "MODELYARD_CONFIG"
CONTEXT_ENV = "MODELYARD_CONTEXT"
# The connection options the commands share (cli/connect.py and the address flags).
KEYS = frozenset(
    {
        "router",
        "registry",
        "worker",
        "api-key",
        "admin-token",
        "registry-token",
        "operator-token",
        "tls-ca",
        "tls-cert",
        "tls-key",
        "tls-server-name",
    }
)
_SECRETS = frozenset({"api-key", "admin-token", "registry-token", "operator-token"})


def config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "modelyard" / "config.yaml"


def load_context(path: Path, name: str | None) -> dict[str, str]:
    """The named context (else the file's current-context) as option values; {} without a
    file. A usage error (exit 2) names what is wrong in the file."""
    if not path.is_file():
        if name:
            raise typer.BadParameter(
                f"no config file at {path} to find it in", param_hint="--context"
            )
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise typer.BadParameter(f"{path}: {err}", param_hint="--context") from err
    contexts = data.get("contexts") if isinstance(data, dict) else None
    if not isinstance(contexts, dict):
        raise typer.BadParameter(f"{path}: expected a 'contexts' mapping", param_hint="--context")
    chosen = name or data.get("current-context")
    if not chosen:
        return {}
    values = contexts.get(chosen)
    if not isinstance(values, dict):
        known = ", ".join(sorted(map(str, contexts))) or "none"
        raise typer.BadParameter(
            f"{path} has no context {chosen!r} (it has: {known})", param_hint="--context"
        )
    unknown = sorted(set(map(str, values)) - KEYS)
    if unknown:
        raise typer.BadParameter(
            f"{path}: context {chosen!r}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(KEYS))})",
            param_hint="--context",
        )
    if _SECRETS & set(values) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.stderr.write(f"warning: {path} holds tokens and others can read it (chmod 600 it)\n")
    return {str(k).replace("-", "_"): str(v) for k, v in values.items()}


def default_map(command: Any, values: Mapping[str, str]) -> dict[str, Any]:
    """click's default_map for `command` and its sub-commands: each gets the values its
    own options are named after."""
    mine = {p.name for p in command.params}
    found: dict[str, Any] = {k: v for k, v in values.items() if k in mine}
    for name, sub in getattr(command, "commands", {}).items():
        nested = default_map(sub, values)
        if nested:
            found[name] = nested
    return found
