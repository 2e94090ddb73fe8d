"""The catalogue a worker's settings ask for: the registry when an address is set, else
the catalogue file, else none (every load is then FAILED_PRECONDITION saying how)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

from modelyard.bearer import bearer_interceptors
from modelyard.telemetry import client_interceptors
from modelyard.tls import secure_or_insecure_channel
from modelyard.v1 import registry_pb2_grpc
from worker.catalogue.base import Catalogue, NoCatalogue
from worker.catalogue.file import read_catalog_file
from worker.catalogue.registry import RegistryCatalogue

if TYPE_CHECKING:
    from worker.config import WorkerSettings

log = logging.getLogger(__name__)


def open_catalogue(settings: WorkerSettings, registry_address: str = "") -> Catalogue:
    """Built before the worker listens: a malformed catalogue file stops it there.

    `registry_address` overrides the setting (one found through Consul)."""
    address = registry_address or settings.registry_address
    if address:
        if settings.catalog_file:
            log.warning("both a registry and a catalogue file are set: using the registry")
        channel = secure_or_insecure_channel(
            address,
            settings.tls,
            [*client_interceptors(), *bearer_interceptors(settings.registry_token)],
        )
        # The stub factory's overload cannot tell that this channel is async.
        stub = cast(
            "registry_pb2_grpc.RegistryServiceAsyncStub",
            registry_pb2_grpc.RegistryServiceStub(channel),
        )
        catalogue = RegistryCatalogue(
            stub, address=address, timeout_s=settings.registry_timeout_s, channel=channel
        )
        catalogue.start()
        return catalogue
    if settings.catalog_file:
        return read_catalog_file(Path(settings.catalog_file))
    log.warning(
        "no model catalogue: set MODELYARD_WORKER_REGISTRY_ADDRESS or "
        "MODELYARD_WORKER_CATALOG_FILE, or this worker loads nothing"
    )
    return NoCatalogue()
