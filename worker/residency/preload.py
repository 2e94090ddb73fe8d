"""The preload list: models a worker loads at start, named by reference from a YAML or
JSON file and resolved through the worker's catalogue like any other load.

The file holds a list (or {"models": [...]}) whose items are "name@version", or
{"model": "name@version", "pin": bool, "keep_alive_s": float}. The older form, a Model
message in its JSON form (bare or under "model"), is still read, but only its name and
version count: what loads is the catalogue's record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelyard.errors import InvalidArgument, ModelyardError, Unavailable
from modelyard.refs import ModelKey, check_name, check_version, model_key
from modelyard.v1 import model_pb2
from worker.residency.state import PreloadEntry

if TYPE_CHECKING:
    from worker.residency.manager import ModelManager

log = logging.getLogger(__name__)

Resolve = Callable[[ModelKey], Awaitable[model_pb2.Model]]
# While the registry is unreachable a preload waits for it, backing off up to this.
RETRY_S = (1.0, 30.0)


def read_preload(path: Path) -> list[PreloadEntry]:
    """Parse the file; INVALID_ARGUMENT naming the file and item when it is malformed."""
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("models", [])
    if not isinstance(data, list):
        raise InvalidArgument(f"{path}: expected a list of 'name@version' references")
    entries = []
    for i, item in enumerate(data):
        try:
            entries.append(_entry(item))
        except InvalidArgument as err:
            raise InvalidArgument(
                f"{path}: item {i}: {err.message} (expected 'name@version' or "
                "{model: 'name@version', pin: bool, keep_alive_s: float})"
            ) from err
    return entries


def _entry(item: Any) -> PreloadEntry:
    if isinstance(item, str):
        return PreloadEntry(_key(item))
    if not isinstance(item, dict):
        raise InvalidArgument("not a reference or a mapping")
    wrapped = "model" in item
    ref = item["model"] if wrapped else item
    if isinstance(ref, dict):  # the older form: a Model message; name and version only
        key = _key(f"{ref.get('name', '')}@{ref.get('version', '')}")
    elif isinstance(ref, str):
        key = _key(ref)
    else:
        raise InvalidArgument("'model' must be 'name@version'")
    keep = item.get("keep_alive_s") if wrapped else None
    return PreloadEntry(
        key,
        pin=bool(item.get("pin", False)) if wrapped else False,
        keep_alive_s=float(keep) if keep is not None else None,
    )


def _key(ref: str) -> ModelKey:
    name, sep, version = ref.strip().partition("@")
    if not sep or not version:
        raise InvalidArgument(f"{ref!r} needs both a name and a version (name@version)")
    return model_key(check_name(name, "model"), check_version(version, "model"))


async def preload(
    manager: ModelManager, resolve: Resolve, entries: Sequence[PreloadEntry]
) -> list[ModelKey]:
    """Load each entry in turn; a failure is logged and the others still load. An entry
    the catalogue cannot answer yet (registry unreachable) is retried until it can.
    Returns the entries that did not load."""
    failed: list[ModelKey] = []
    for entry in entries:
        delay = RETRY_S[0]
        while True:
            try:
                model = await resolve(entry.key)
                await manager.load(model, pin=entry.pin, keep_alive_s=entry.keep_alive_s)
            except Unavailable as err:
                log.warning("preloading %s: %s; retrying in %.0f s", entry.key, err.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            except ModelyardError as err:
                log.warning("preloading %s failed: %s", entry.key, err.message)
                failed.append(entry.key)
            break
    return failed
