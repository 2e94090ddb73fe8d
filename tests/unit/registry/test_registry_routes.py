"""Stages, deletes and routes on SQLite and PostgreSQL: every rule names its field."""

from __future__ import annotations

import pytest

from modelyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from modelyard.v1 import common_pb2, model_pb2, registry_pb2
from registry.store import RegistryStore
from tests.unit.registry.factories import make_model, make_route

PRODUCTION = model_pb2.STAGE_PRODUCTION
ARCHIVED = model_pb2.STAGE_ARCHIVED
STAGING = model_pb2.STAGE_STAGING


async def fields_of(store: RegistryStore, route: model_pb2.Route) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        await store.put_route(route)
    return [v.field for v in caught.value.violations]


async def test_set_stage_moves_a_version_and_bumps_the_revision(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="2"))

    promoted, revision = await store.set_stage("smollm2", "1", PRODUCTION)
    again, same_revision = await store.set_stage("smollm2", "1", PRODUCTION)

    assert promoted.stage == PRODUCTION and revision == 3
    assert promoted.updated_at.ToDatetime() >= promoted.created_at.ToDatetime()
    assert again == promoted and same_revision == 3  # same stage: no write
    # The bare name is the newest production version, though 2 is newer.
    assert (await store.get("smollm2")).version == "1"
    await store.set_stage("smollm2", "2", PRODUCTION)
    assert (await store.get("smollm2")).version == "2"
    await store.set_stage("smollm2", "2", ARCHIVED)
    assert (await store.get("smollm2")).version == "1"


async def test_set_stage_rejects_unspecified_and_unknown(store: RegistryStore) -> None:
    await store.register(make_model())
    with pytest.raises(InvalidArgument, match=r"^stage:"):
        await store.set_stage("smollm2", "1", model_pb2.STAGE_UNSPECIFIED)
    with pytest.raises(NotFound):
        await store.set_stage("smollm2", "9", PRODUCTION)
    with pytest.raises(InvalidArgument, match=r"^version:"):
        await store.set_stage("smollm2", "", PRODUCTION)


async def test_delete_model_removes_the_version_and_records_a_change(
    store: RegistryStore,
) -> None:
    await store.register(make_model(version="1", tags=("a",), labels={"k": "v"}))

    revision = await store.delete_model("smollm2", "1")

    assert revision == 2
    with pytest.raises(NotFound):
        await store.get("smollm2", "1")
    with pytest.raises(NotFound):
        await store.delete_model("smollm2", "1")
    # The same version can be registered again (with new content) after a delete.
    assert (await store.register(make_model(version="1", uri="file:///new.gguf"))).created
    changes, _ = await store.changes_after(1, 10)
    assert [c.kind for c in changes] == [
        registry_pb2.CHANGE_KIND_MODEL_DELETED,
        registry_pb2.CHANGE_KIND_MODEL_PUT,
    ]
    assert (changes[0].model.name, changes[0].model.version) == ("smollm2", "1")


async def test_route_round_trip_and_idempotent_put(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="2"))
    route = make_route(arms=(("smollm2@1", 9.0), ("smollm2@2", 1.0)), fallbacks=("smollm2",))
    route.arms[0].name = "control"
    route.sticky_sessions = True
    route.default_objective = common_pb2.OBJECTIVE_LATENCY
    route.max_ttft_ms = 500

    stored, revision = await store.put_route(route)
    again, same = await store.put_route(route)

    assert revision == 3 and same == 3
    assert again == stored
    assert [a.name for a in stored.arms] == ["control", "smollm2@2"]  # empty name: the model
    assert stored.updated_at.seconds > 0
    assert await store.get_route("chat") == stored
    listed = await store.list_routes()
    assert listed.routes == [stored] and listed.revision == 3

    route.arms[1].weight = 3.0
    replaced, revision = await store.put_route(route)
    assert revision == 4 and replaced.arms[1].weight == 3.0

    assert await store.delete_route("chat") == 5
    with pytest.raises(NotFound, match="route 'chat' not found"):
        await store.get_route("chat")
    with pytest.raises(NotFound):
        await store.delete_route("chat")


async def test_every_arm_rule_names_its_field(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="old", stage=ARCHIVED))
    await store.register(make_model(name="gone", version="1", stage=ARCHIVED))

    assert await fields_of(store, make_route(arms=())) == ["route.arms"]
    assert await fields_of(store, make_route(arms=(("smollm2@1", 0.0),))) == [
        "route.arms[0].weight"
    ]
    bad_weights = make_route(arms=(("smollm2@1", 1.0), ("smollm2@1", -1.0)))
    bad_weights.arms[0].name = "a"
    bad_weights.arms[1].name = "b"
    assert await fields_of(store, bad_weights) == ["route.arms[1].weight"]
    assert await fields_of(store, make_route(arms=(("smollm2@1", float("nan")),))) == [
        "route.arms[0].weight"
    ]
    assert await fields_of(store, make_route(arms=(("smollm2@1", float("inf")),))) == [
        "route.arms[0].weight"
    ]
    assert await fields_of(store, make_route(arms=(("nope@1", 1.0),))) == ["route.arms[0].model"]
    assert await fields_of(store, make_route(arms=(("smollm2@9", 1.0),))) == ["route.arms[0].model"]
    assert await fields_of(store, make_route(arms=(("Bad Ref", 1.0),))) == ["route.arms[0].model"]
    with pytest.raises(InvalidArgument, match="archived versions are not routable"):
        await store.put_route(make_route(arms=(("smollm2@old", 1.0),)))
    with pytest.raises(InvalidArgument, match="every version of model 'gone' is archived"):
        await store.put_route(make_route(arms=(("gone", 1.0),)))
    duplicate = make_route(arms=(("smollm2@1", 1.0), ("smollm2@1", 2.0)))
    assert await fields_of(store, duplicate) == ["route.arms[1].name"]
    assert await store.revision() == 3  # nothing was written


async def test_route_setting_rules_name_their_fields(store: RegistryStore) -> None:
    await store.register(make_model())
    bad = make_route(name="Bad Name")
    bad.default_objective = common_pb2.Objective.ValueType(99)
    bad.max_ttft_ms = 0
    bad.max_cost_per_1k_tokens = -1

    assert await fields_of(store, make_route(name="auto")) == ["route.name"]
    assert await fields_of(store, bad) == [
        "route.name",
        "route.default_objective",
        "route.max_ttft_ms",
        "route.max_cost_per_1k_tokens",
    ]


async def test_fallback_rules_name_their_fields(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="old", stage=ARCHIVED))
    await store.put_route(make_route(name="a"))

    assert await fields_of(store, make_route(fallbacks=("nope",))) == ["route.fallbacks[0]"]
    assert await fields_of(store, make_route(fallbacks=("smollm2@old",))) == ["route.fallbacks[0]"]
    assert await fields_of(store, make_route(fallbacks=("a", "a"))) == ["route.fallbacks[1]"]
    assert await fields_of(store, make_route(fallbacks=("a@1",))) == ["route.fallbacks[0]"]
    assert await fields_of(store, make_route(name="self", fallbacks=("self",))) == [
        "route.fallbacks[0]"
    ]
    # A route may fall back to another route and to models.
    stored, _ = await store.put_route(make_route(name="b", fallbacks=("smollm2@1", "a")))
    assert list(stored.fallbacks) == ["smollm2@1", "a"]


async def test_fallback_cycles_are_refused_with_the_loop(store: RegistryStore) -> None:
    await store.register(make_model())
    await store.put_route(make_route(name="a"))
    await store.put_route(make_route(name="b", fallbacks=("a",)))
    await store.put_route(make_route(name="c", fallbacks=("b",)))

    with pytest.raises(InvalidArgument) as caught:
        await store.put_route(make_route(name="a", fallbacks=("c",)))

    assert [v.field for v in caught.value.violations] == ["route.fallbacks[0]"]
    assert "a -> c -> b -> a" in caught.value.message
    assert list((await store.get_route("a")).fallbacks) == []


async def test_route_and_model_names_cannot_clash(store: RegistryStore) -> None:
    await store.register(make_model())
    await store.put_route(make_route(name="chat"))

    with pytest.raises(AlreadyExists) as route_clash:
        await store.put_route(make_route(name="smollm2"))
    with pytest.raises(AlreadyExists) as model_clash:
        await store.register(make_model(name="chat"))

    assert [v.field for v in route_clash.value.violations] == ["route.name"]
    assert route_clash.value.message.startswith("route.name:")
    assert [v.field for v in model_clash.value.violations] == ["model.name"]
    assert model_clash.value.metadata["field"] == "model.name"


async def test_a_model_a_route_needs_cannot_be_deleted_or_archived(store: RegistryStore) -> None:
    await store.register(make_model(version="1"))
    await store.register(make_model(version="2"))
    await store.put_route(make_route(name="pinned", arms=(("smollm2@1", 1.0),)))

    with pytest.raises(FailedPrecondition, match=r"route pinned \(arms\[0\].model\)") as caught:
        await store.delete_model("smollm2", "1")
    assert caught.value.metadata["routes"] == "pinned"
    with pytest.raises(FailedPrecondition, match="cannot archive"):
        await store.set_stage("smollm2", "1", ARCHIVED)
    await store.delete_model("smollm2", "2")  # not used by any route

    await store.put_route(make_route(name="pinned", arms=(("smollm2", 1.0),)))
    await store.register(make_model(version="3"))
    # A bare reference is fine while another version could serve it...
    await store.set_stage("smollm2", "1", ARCHIVED)
    # ...but not once the last one would go.
    with pytest.raises(FailedPrecondition, match=r"route pinned \(arms\[0\]\.model\)"):
        await store.delete_model("smollm2", "3")
    await store.delete_route("pinned")
    await store.delete_model("smollm2", "3")


async def test_a_route_that_is_a_fallback_cannot_be_deleted(store: RegistryStore) -> None:
    await store.register(make_model())
    await store.put_route(make_route(name="a"))
    await store.put_route(make_route(name="b", fallbacks=("a",)))

    with pytest.raises(FailedPrecondition, match=r"fallback of route b \(fallbacks\[0\]\)"):
        await store.delete_route("a")
    await store.put_route(make_route(name="b"))
    await store.delete_route("a")
