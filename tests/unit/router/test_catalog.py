"""Catalog: model names resolved against a RegistryService double, cached, and served
from the cache while the registry is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
import pytest_asyncio

from modelyard.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from modelyard.local_mesh import free_port
from modelyard.server import start_server
from modelyard.v1 import common_pb2, model_pb2, registry_pb2_grpc
from router.catalog import Catalog
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    REGISTRY_SERVICE,
    FakeRegistry,
    RegistryUnderTest,
    make_model,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def catalog(registry: RegistryUnderTest, clock: FakeClock) -> AsyncIterator[Catalog]:
    async with grpc.aio.insecure_channel(registry.address) as channel:
        stub = cast(
            "registry_pb2_grpc.RegistryServiceAsyncStub",
            registry_pb2_grpc.RegistryServiceStub(channel),
        )
        yield Catalog(
            stub, registry_address=registry.address, ttl_s=5.0, call_timeout_s=1.0, clock=clock
        )


async def test_name_resolves_to_the_registry_default_and_name_at_version_is_exact(
    catalog: Catalog,
) -> None:
    default = await catalog.resolve("tiny", chat=True)
    exact = await catalog.resolve("tiny@2", chat=True)

    assert (default.name, default.version) == ("tiny", "1")
    assert (exact.name, exact.version) == ("tiny", "2")


async def test_resolutions_are_cached_for_the_ttl(
    catalog: Catalog, registry: RegistryUnderTest, clock: FakeClock
) -> None:
    await catalog.resolve("tiny", chat=True)
    clock.now += 4.9
    await catalog.resolve("tiny", chat=True)
    assert registry.fake.get_calls == 1

    clock.now += 0.2
    await catalog.resolve("tiny", chat=True)
    assert registry.fake.get_calls == 2


async def test_malformed_model_is_invalid_argument_naming_the_field(catalog: Catalog) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await catalog.resolve("Not A Name", chat=True)

    assert caught.value.violations[0].field == "model"


async def test_unknown_model_is_not_found_with_a_next_step(catalog: Catalog) -> None:
    with pytest.raises(NotFound) as caught:
        await catalog.resolve("nope", chat=True)

    assert "'nope' is not registered" in caught.value.message
    assert "modelyard models list" in caught.value.message


async def test_archived_version_is_failed_precondition(
    catalog: Catalog, registry: RegistryUnderTest
) -> None:
    registry.fake.models.append(make_model("old", "1", stage=model_pb2.STAGE_ARCHIVED))

    with pytest.raises(FailedPrecondition, match="archived"):
        await catalog.resolve("old@1", chat=True)


async def test_registry_down_serves_from_cache_else_unavailable_naming_it(
    catalog: Catalog, registry: RegistryUnderTest, clock: FakeClock
) -> None:
    await catalog.resolve("tiny", chat=True)
    await registry.server.stop(0)
    clock.now += 60  # long past the TTL: stale entries still beat failing

    stale = await catalog.resolve("tiny", chat=True)
    with pytest.raises(Unavailable) as caught:
        await catalog.resolve("tiny@2", chat=True)

    assert stale.version == "1"
    assert registry.address in caught.value.message

    assert "failed to connect" not in caught.value.message  # gRPC's own words stay in the log


async def test_a_registry_that_starts_after_the_router_answers_its_first_request() -> None:
    # Registry and router started side by side (a Helm install): the router's first
    # connection fails and backs off, and a request in that backoff waits for the registry
    # within its deadline instead of failing fast as unreachable.
    address = f"127.0.0.1:{free_port()}"
    fake = FakeRegistry([make_model("tiny", "1")])
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cast(
            "registry_pb2_grpc.RegistryServiceAsyncStub",
            registry_pb2_grpc.RegistryServiceStub(channel),
        )
        catalog = Catalog(stub, registry_address=address, call_timeout_s=5.0)
        with pytest.raises(Unavailable):  # nothing listens yet: the channel now backs off
            await catalog.resolve("tiny", chat=True, timeout_s=0.2)
        server = await start_server(
            address,
            lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(fake, s),
            [REGISTRY_SERVICE],
        )
        try:
            resolved = await catalog.resolve("tiny", chat=True)
        finally:
            await server.stop(0)

    assert resolved.version == "1"


async def test_auto_picks_a_fitting_model_production_first(
    catalog: Catalog, registry: RegistryUnderTest
) -> None:
    registry.fake.models = [
        make_model("chatty", "2", stage=model_pb2.STAGE_STAGING, completion=False),
        make_model("chatty", "1", completion=False),
        make_model("base", "1", chat=False, tags=["code"]),
        make_model("gone", "1", stage=model_pb2.STAGE_ARCHIVED),
    ]

    chat = await catalog.resolve("auto", chat=True)
    completion = await catalog.resolve("", chat=False)
    tagged = await catalog.resolve(
        "auto", chat=False, hints=common_pb2.RoutingHints(required_tags=["code"])
    )

    assert (chat.name, chat.version) == ("chatty", "1")
    assert completion.name == "base"
    assert tagged.name == "base"


async def test_auto_with_nothing_fitting_is_not_found_saying_why(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="context of at least 99999 tokens"):
        await catalog.resolve(
            "auto", chat=True, hints=common_pb2.RoutingHints(min_context_length=99999)
        )


async def test_listing_pages_through_and_skips_archived(
    catalog: Catalog, registry: RegistryUnderTest
) -> None:
    registry.fake.models.append(make_model("gone", "1", stage=model_pb2.STAGE_ARCHIVED))

    listing = await catalog.list_servable()

    assert [f"{m.name}@{m.version}" for m in listing.models] == ["tiny@1", "tiny@2"]
    assert listing.revision == registry.fake.revision
