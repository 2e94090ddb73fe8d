"""The one question a worker asks a catalogue: which model version is `name@version`."""

from __future__ import annotations

from typing import Protocol

from modelyard.errors import FailedPrecondition
from modelyard.refs import ModelKey
from modelyard.v1 import model_pb2


class Catalogue(Protocol):
    async def resolve(self, key: ModelKey) -> model_pb2.Model:
        """The registered model, or NOT_FOUND / FAILED_PRECONDITION / UNAVAILABLE."""
        ...

    async def close(self) -> None: ...


class NoCatalogue:
    """A worker configured with neither a registry nor a catalogue file loads nothing."""

    async def resolve(self, key: ModelKey) -> model_pb2.Model:
        raise FailedPrecondition(
            f"cannot load {key}: this worker has no model catalogue; set "
            "MODELYARD_WORKER_REGISTRY_ADDRESS to the registry's host:port (or run it with "
            "Consul discovery), or MODELYARD_WORKER_CATALOG_FILE to a YAML/JSON list of models",
            reason="NO_CATALOGUE",
            metadata={"model": key},
        )

    async def close(self) -> None:
        return None
