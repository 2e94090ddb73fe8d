"""The catalogue a worker's settings ask for: the registry when an address is set, else
the catalogue file, else the registry Consul lists (with Consul discovery), else none
(every load is then FAILED_PRECONDITION saying how)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

from modelyard.bearer import bearer_interceptors
from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.discovery import DiscoverySettings
from modelyard.telemetry import client_interceptors
from modelyard.tls import secure_or_insecure_channel
from modelyard.v1 import registry_pb2_grpc
from worker.catalogue.base import Catalogue, NoCatalogue
from worker.catalogue.consul import ConsulRegistryCatalogue
from worker.catalogue.file import read_catalog_file
from worker.catalogue.registry import RegistryCatalogue

if TYPE_CHECKING:
    from worker.config import WorkerSettings

log = logging.getLogger(__name__)


def open_catalogue(
    settings: WorkerSettings, discovery: DiscoverySettings | None = None
) -> Catalogue:
    """Built before the worker listens: a malformed catalogue file stops it there.

    With none of a registry address and a catalogue file set, and Consul `discovery`
    enabled: the registry Consul lists (worker/catalogue/consul.py)."""
    if settings.registry_address:
        if settings.catalog_file:
            log.warning("both a registry and a catalogue file are set: using the registry")
        return registry_catalogue(settings, settings.registry_address)
    if settings.catalog_file:
        return read_catalog_file(Path(settings.catalog_file))
    if discovery is not None and discovery.enabled:
        consul = ConsulRegistryCatalogue(discovery, functools.partial(registry_catalogue, settings))
        consul.start()
        return consul
    log.warning(
        "no model catalogue: set MODELYARD_WORKER_REGISTRY_ADDRESS or "
        "MODELYARD_WORKER_CATALOG_FILE, or this worker loads nothing"
    )
    return NoCatalogue()


def registry_catalogue(settings: WorkerSettings, address: str) -> RegistryCatalogue:
    """The catalogue of the registry at `address`, following its Watch."""
    channel = secure_or_insecure_channel(
        address,
        settings.tls,
        [*client_interceptors(), *bearer_interceptors(settings.registry_token)],
        CHANNEL_OPTIONS,
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
