"""An operator-owned catalogue file, for workers run without a registry (standalone
development, some tests): a YAML or JSON list of Model messages in their JSON form
(or {"models": [...]}). Read once at start; a malformed file stops the worker. Its
load_options.extra keys go through the same per-engine allow-list at load as a
registered model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from modelyard.errors import InvalidArgument, NotFound
from modelyard.refs import ModelKey, check_name, check_version, key_of
from modelyard.v1 import model_pb2
from worker.catalogue.checks import servable


class FileCatalogue:
    def __init__(self, models: list[model_pb2.Model]) -> None:
        self._models = {key_of(m): m for m in models}

    async def resolve(self, key: ModelKey) -> model_pb2.Model:
        model = self._models.get(key)
        if model is None:
            raise NotFound(
                f"model {key} is not in this worker's catalogue file "
                "(MODELYARD_WORKER_CATALOG_FILE); add it there and restart the worker",
                reason="MODEL_NOT_FOUND",
                metadata={"model": key},
            )
        return servable(model)

    async def close(self) -> None:
        return None


def read_catalog_file(path: Path) -> FileCatalogue:
    """The catalogue in `path`; INVALID_ARGUMENT naming the file and item when malformed."""
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("models", [])
    if not isinstance(data, list):
        raise InvalidArgument(f"{path}: expected a list of models")
    models = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{path}: item {i} is not a mapping")
        try:
            model = json_format.ParseDict(item, model_pb2.Model())
            check_name(model.name, "name")
            check_version(model.version, "version")
        except (json_format.ParseError, InvalidArgument) as err:
            raise InvalidArgument(f"{path}: item {i} is not a valid Model: {err}") from err
        models.append(model)
    return FileCatalogue(models)
