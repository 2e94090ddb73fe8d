"""The preload list: models a worker loads at start, from a YAML or JSON file.

The file holds a list (or {"models": [...]}) whose items are either a Model
message in its JSON form, or {"model": <Model>, "pin": bool, "keep_alive_s": float}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from modelyard.errors import InvalidArgument
from modelyard.v1 import model_pb2
from worker.residency.state import PreloadEntry


def read_preload(path: Path) -> list[PreloadEntry]:
    """Parse the file; INVALID_ARGUMENT naming the file and item when it is malformed."""
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("models", [])
    if not isinstance(data, list):
        raise InvalidArgument(f"{path}: expected a list of models")
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{path}: item {i} is not a mapping")
        wrapped = "model" in item
        body = item["model"] if wrapped else item
        try:
            model = json_format.ParseDict(body, model_pb2.Model())
        except json_format.ParseError as err:
            raise InvalidArgument(f"{path}: item {i} is not a Model: {err}") from err
        if not model.name or not model.version:
            raise InvalidArgument(f"{path}: item {i} needs both a name and a version")
        keep = item.get("keep_alive_s") if wrapped else None
        entries.append(
            PreloadEntry(
                model,
                pin=bool(item.get("pin", False)) if wrapped else False,
                keep_alive_s=float(keep) if keep is not None else None,
            )
        )
    return entries
