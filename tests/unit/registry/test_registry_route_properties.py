"""Property tests: a route is accepted iff every reference resolves and no fallback cycle forms."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.errors import InvalidArgument
from modelyard.v1 import model_pb2
from registry.store import open_store
from registry.validation import RouteFacts, validate_route
from tests.unit.registry.factories import make_model

ROUTES = [f"r{i}" for i in range(5)]
MODELS = ["m0", "m1", "m2"]
VERSIONS = ["1", "2"]
STAGES = [model_pb2.STAGE_STAGING, model_pb2.STAGE_PRODUCTION, model_pb2.STAGE_ARCHIVED]

refs = st.sampled_from(
    [*ROUTES, *MODELS, "missing", *(f"{m}@{v}" for m in MODELS for v in [*VERSIONS, "9"])]
)


def routable(ref: str, versions: Mapping[str, Mapping[str, int]]) -> bool:
    name, _, version = ref.partition("@")
    found = versions.get(name, {})
    if version:
        return version in found and found[version] != model_pb2.STAGE_ARCHIVED
    return any(stage != model_pb2.STAGE_ARCHIVED for stage in found.values())


def acyclic(graph: Mapping[str, Sequence[str]]) -> bool:
    """Kahn's algorithm, independent of the validator's own search."""
    indegree = {node: 0 for node in graph}
    for targets in graph.values():
        for target in targets:
            indegree[target] = indegree.get(target, 0) + 1
    ready = [node for node, degree in indegree.items() if degree == 0]
    removed = 0
    while ready:
        node = ready.pop()
        removed += 1
        for target in graph.get(node, ()):
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    return removed == len(indegree)


@st.composite
def catalogues(draw: st.DrawFn) -> tuple[RouteFacts, str, list[str], list[str]]:
    versions = {
        m: {v: draw(st.sampled_from(STAGES)) for v in draw(st.sets(st.sampled_from(VERSIONS)))}
        for m in MODELS
    }
    versions = {m: vs for m, vs in versions.items() if vs}
    existing = draw(st.sets(st.sampled_from(ROUTES)))
    # Existing routes fall back only to earlier ones: the stored graph is acyclic, as the
    # store guarantees.
    ordered = sorted(existing)
    graph = {
        r: draw(st.lists(st.sampled_from(ordered[:i]), unique=True)) if i else []
        for i, r in enumerate(ordered)
    }
    name = draw(st.sampled_from(ROUTES))
    arms = draw(st.lists(refs, min_size=1, max_size=3, unique=True))
    fallbacks = draw(st.lists(refs, max_size=4, unique=True))
    return RouteFacts(versions=versions, fallback_routes=graph), name, arms, fallbacks


@given(catalogues())
@settings(max_examples=400, deadline=None)
def test_accepted_iff_references_resolve_and_no_cycle(
    case: tuple[RouteFacts, str, list[str], list[str]],
) -> None:
    facts, name, arms, fallbacks = case
    route = model_pb2.Route(
        name=name,
        arms=[model_pb2.RouteArm(name=f"a{i}", model=m, weight=1) for i, m in enumerate(arms)],
        fallbacks=fallbacks,
    )
    graph = {r: list(targets) for r, targets in facts.fallback_routes.items()}
    routes_now = set(graph) | {name}
    graph[name] = [f for f in fallbacks if f in routes_now]
    arms_ok = all(routable(a, facts.versions) for a in arms)
    fallbacks_ok = all(f in routes_now or routable(f, facts.versions) for f in fallbacks)
    expected = arms_ok and fallbacks_ok and acyclic(graph)

    try:
        valid = validate_route(route, facts)
    except InvalidArgument as err:
        assert not expected, err.message
        allowed = {f"route.arms[{i}].model" for i in range(len(arms))} | {
            f"route.fallbacks[{i}]" for i in range(len(fallbacks))
        }
        assert err.violations and {v.field for v in err.violations} <= allowed
        return
    assert expected
    kinds = {t.field: t.kind for t in valid.targets}
    assert all(kinds[f"fallbacks[{i}]"] == "route" for i, f in enumerate(fallbacks) if f in ROUTES)


ops = st.lists(
    st.tuples(st.sampled_from(ROUTES[:4]), st.lists(st.sampled_from(ROUTES[:4]), max_size=2)),
    min_size=1,
    max_size=8,
)


@given(ops)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_stored_fallback_graph_stays_acyclic(sequence: list[tuple[str, list[str]]]) -> None:
    """Random PutRoute sequences on a real store: each is accepted iff the graph stays acyclic."""

    async def run(path: Path) -> None:
        store = await open_store(f"sqlite+aiosqlite:///{path}")
        try:
            await store.register(make_model(name="m", version="1"))
            graph: dict[str, list[str]] = {}
            for name, fallbacks in sequence:
                fallbacks = list(dict.fromkeys(fallbacks))
                route = model_pb2.Route(
                    name=name,
                    arms=[model_pb2.RouteArm(model="m@1", weight=1)],
                    fallbacks=fallbacks,
                )
                proposed = {**graph, name: fallbacks}
                known = set(proposed)
                expected = all(f in known for f in fallbacks) and acyclic(proposed)
                try:
                    await store.put_route(route)
                except InvalidArgument:
                    assert not expected
                    continue
                assert expected
                graph = proposed
            stored = {r.name: list(r.fallbacks) for r in (await store.list_routes()).routes}
            assert stored == graph and acyclic(stored)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp) / "registry.db"))
