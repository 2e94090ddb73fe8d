"""Rollouts in the store (SQLite): PutRoute's policy checks and server-owned status, the
controller's decisions as catalogue writes (advance, rollback, promotion with the model's
stage in the same write), operator controls, and evaluation runs with the gate."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from modelyard.v1 import model_pb2, outcomes_pb2, registry_pb2
from registry.evaluations import EvaluationStore
from registry.outcomes import OutcomeStore
from registry.rollout.control import control
from registry.rollout.controller import RolloutController
from registry.rollout.edit import RouteEdited
from registry.store import RegistryStore, open_store
from registry.validation import RouteFacts, validate_route
from tests.unit.registry.factories import make_model

P = model_pb2
FACTS = RouteFacts(versions={"m": {"1": P.STAGE_PRODUCTION, "2": P.STAGE_STAGING}})
_ids = itertools.count()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[RegistryStore]:
    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", poll_interval_s=0.2)
    for version in ("1", "2"):
        await opened.register(make_model("m", version))
    yield opened
    await opened.close()


def rollout_route(**policy: object) -> P.Route:
    values: dict[str, object] = {
        "canary_arm": "new",
        "baseline_arm": "old",
        "steps_percent": [10, 50, 100],
        "min_step_seconds": 1,
        "min_requests": 5,
        "max_error_rate_increase": 0.0,
    }
    values.update(policy)
    return P.Route(
        name="chat",
        arms=[
            P.RouteArm(name="old", model="m@1", weight=1),
            P.RouteArm(name="new", model="m@2", weight=1),
        ],
        rollout=P.RolloutPolicy(**values),  # type: ignore[arg-type]
    )


def weights(route: P.Route) -> dict[str, float]:
    return {arm.name: arm.weight for arm in route.arms}


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"canary_arm": "nope"}, "route.rollout.canary_arm"),
        ({"baseline_arm": "new"}, "route.rollout.baseline_arm"),
        ({"steps_percent": [100]}, "route.rollout.steps_percent"),
        ({"steps_percent": [10, 5, 100]}, "route.rollout.steps_percent[1]"),
        ({"steps_percent": [10, 50]}, "route.rollout.steps_percent[1]"),
        ({"steps_percent": [0, 100]}, "route.rollout.steps_percent[0]"),
        ({"steps_percent": [*range(1, 22), 100]}, "route.rollout.steps_percent"),
        ({"min_step_seconds": 0}, "route.rollout.min_step_seconds"),
        ({"min_step_seconds": 86_401}, "route.rollout.min_step_seconds"),
        ({"min_requests": 0}, "route.rollout.min_requests"),
        ({"max_error_rate_increase": 1.5}, "route.rollout.max_error_rate_increase"),
        ({"max_ttft_p95_ratio": 0.0}, "route.rollout.max_ttft_p95_ratio"),
        ({"max_cost_ratio": float("inf")}, "route.rollout.max_cost_ratio"),
        ({"min_feedback_delta": float("nan")}, "route.rollout.min_feedback_delta"),
        ({"alpha": 0.5}, "route.rollout.alpha"),
        (
            {"evaluation_gate": P.EvaluationGate(metric="exact match")},
            "route.rollout.evaluation_gate.metric",
        ),
        (
            {"evaluation_gate": P.EvaluationGate(min_delta=0.1)},
            "route.rollout.evaluation_gate.metric",
        ),
    ],
)
def test_a_bad_policy_is_refused_naming_its_field(policy: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_route(rollout_route(**policy), FACTS)
    assert field in [v.field for v in refused.value.violations]


def test_a_third_arm_is_refused_and_a_good_policy_passes() -> None:
    route = rollout_route()
    validate_route(route, FACTS)
    route.arms.add(name="third", model="m@1", weight=1)
    with pytest.raises(InvalidArgument) as refused:
        validate_route(route, FACTS)
    assert "route.arms" in [v.field for v in refused.value.violations]


async def test_the_status_is_the_registrys_and_survives_an_unchanged_put(
    sqlite_store: RegistryStore,
) -> None:
    route = rollout_route()
    route.rollout_status.state = P.ROLLOUT_STATE_SUCCEEDED  # a client's copy: ignored
    stored, revision = await sqlite_store.put_route(route)
    status = stored.rollout_status
    assert status.state == P.ROLLOUT_STATE_PROGRESSING and status.step == 0
    assert weights(stored) == {"old": 90.0, "new": 10.0}
    assert [d.action for d in status.history] == [P.ROLLOUT_ACTION_START]
    # Put again as a client would, with other weights: nothing changes.
    again, same = await sqlite_store.put_route(rollout_route())
    assert same == revision and again.rollout_status == status
    # A changed policy starts over (a second START decision).
    changed, later = await sqlite_store.put_route(rollout_route(min_requests=7))
    assert later > revision
    assert [d.action for d in changed.rollout_status.history] == [P.ROLLOUT_ACTION_START] * 2


def outcome(arm: str, *, error: bool = False, ttft_ms: float = 50.0) -> outcomes_pb2.Outcome:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(time.time() * 1000) + 10)
    return outcomes_pb2.Outcome(
        request_id=f"r{next(_ids)}",
        finished_at=stamp,
        model="m",
        version="2" if arm == "new" else "1",
        route="chat",
        arm=arm,
        status_code=14 if error else 0,
        ttft_ms=ttft_ms,
        total_ms=ttft_ms * 2,
    )


async def traffic(
    outcomes: OutcomeStore, n: int, *, canary_errors: int = 0, cached: bool = False
) -> None:
    batch = [outcome("old") for _ in range(n)]
    batch += [outcome("new", error=i < canary_errors) for i in range(n)]
    for o in batch:
        o.cached = cached
    await outcomes.record(batch)


def later(seconds: float = 2.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_the_controller_advances_then_promotes_in_one_write_each(
    sqlite_store: RegistryStore,
) -> None:
    await sqlite_store.put_route(rollout_route(promote_on_success=True))
    outcomes = OutcomeStore(sqlite_store.engine)
    controller = RolloutController(sqlite_store)
    await traffic(outcomes, 30, cached=True)  # cache hits do not count
    assert await controller.tick(later()) == 0
    assert "too few" in controller.waiting["chat"] or "needed" in controller.waiting["chat"]
    before = await sqlite_store.revision()
    await traffic(outcomes, 30)
    assert await controller.tick(later()) == 1
    route = await sqlite_store.get_route("chat")
    assert route.rollout_status.step == 1 and weights(route) == {"old": 50.0, "new": 50.0}
    assert await controller.tick(later()) == 0  # a new window: its outcomes start afresh
    await traffic(outcomes, 30)
    assert await controller.tick(later()) == 1
    route = await sqlite_store.get_route("chat")
    assert route.rollout_status.state == P.ROLLOUT_STATE_SUCCEEDED
    assert weights(route) == {"old": 0.0, "new": 100.0}
    history = route.rollout_status.history
    assert [d.action for d in history] == [
        P.ROLLOUT_ACTION_START,
        P.ROLLOUT_ACTION_ADVANCE,
        P.ROLLOUT_ACTION_PROMOTE,
    ]
    assert all("error rate 0.0% (0/30)" in d.reason for d in history[1:])
    assert (await sqlite_store.get("m", "2")).stage == P.STAGE_PRODUCTION
    changes, _ = await sqlite_store.changes_after(before, 10)
    assert [c.kind for c in changes] == [
        registry_pb2.CHANGE_KIND_ROUTE_PUT,
        registry_pb2.CHANGE_KIND_ROUTE_PUT,
        registry_pb2.CHANGE_KIND_MODEL_PUT,
    ]


async def test_a_failing_canary_rolls_back_at_once(sqlite_store: RegistryStore) -> None:
    await sqlite_store.put_route(rollout_route(min_step_seconds=3600))
    await traffic(OutcomeStore(sqlite_store.engine), 30, canary_errors=12)
    assert await RolloutController(sqlite_store).tick(datetime.now(UTC)) == 1
    route = await sqlite_store.get_route("chat")
    assert route.rollout_status.state == P.ROLLOUT_STATE_ROLLED_BACK
    assert weights(route) == {"old": 100.0, "new": 0.0}
    assert "error rate 40.0% (12/30)" in route.rollout_status.history[-1].reason
    assert (await sqlite_store.get("m", "2")).stage != P.STAGE_PRODUCTION


async def operate(store: RegistryStore, action: registry_pb2.RolloutControl.ValueType) -> P.Route:
    async def edit(session: object, route: P.Route, now: datetime) -> RouteEdited:
        return RouteEdited(control(route, action, now, actor="ops", reason=""))

    done = await store.edit_route("chat", edit)
    assert done is not None
    return done[0]


async def test_operator_controls_follow_the_states(sqlite_store: RegistryStore) -> None:
    await sqlite_store.put_route(rollout_route())
    paused = await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_PAUSE)
    assert paused.rollout_status.state == P.ROLLOUT_STATE_PAUSED
    await traffic(OutcomeStore(sqlite_store.engine), 30, canary_errors=30)
    assert await RolloutController(sqlite_store).tick(later()) == 0  # paused: not judged
    with pytest.raises(FailedPrecondition):
        await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_PAUSE)
    with pytest.raises(FailedPrecondition):
        await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_RESTART)
    resumed = await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_RESUME)
    assert resumed.rollout_status.state == P.ROLLOUT_STATE_PROGRESSING
    assert resumed.rollout_status.step_started_at.ToDatetime(UTC) > (
        paused.rollout_status.step_started_at.ToDatetime(UTC)
    )
    aborted = await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_ABORT)
    assert aborted.rollout_status.state == P.ROLLOUT_STATE_ABORTED
    assert weights(aborted) == {"old": 100.0, "new": 0.0}
    assert aborted.rollout_status.history[-1].actor == "ops"
    restarted = await operate(sqlite_store, registry_pb2.ROLLOUT_CONTROL_RESTART)
    assert restarted.rollout_status.state == P.ROLLOUT_STATE_PROGRESSING
    assert weights(restarted) == {"old": 90.0, "new": 10.0}


def run(
    run_id: str, new: float, old: float, created_ms: int | None = None
) -> outcomes_pb2.EvaluationRun:
    targets = [
        outcomes_pb2.EvaluationTarget(
            target=f"m@{v}",
            model="m",
            version=v,
            metrics=[outcomes_pb2.MetricSummary(metric="exact_match", count=10, mean=mean)],
        )
        for v, mean in (("2", new), ("1", old))
    ]
    evaluation = outcomes_pb2.EvaluationRun(id=run_id, dataset="qa", prompts=10, targets=targets)
    if created_ms is not None:
        evaluation.created_at.FromMilliseconds(created_ms)
    return evaluation


async def test_evaluation_runs_are_idempotent_and_listed_by_model(
    sqlite_store: RegistryStore,
) -> None:
    evaluations = EvaluationStore(sqlite_store.engine)
    assert await evaluations.record(run("a", 0.8, 0.7, 1_000))
    assert not await evaluations.record(run("a", 0.8, 0.7, 1_000))
    with pytest.raises(AlreadyExists):
        await evaluations.record(run("a", 0.9, 0.7, 1_000))
    assert await evaluations.record(run("b", 0.8, 0.7))  # stamped now: the newest
    assert [r.id for r in await evaluations.list("m@2")] == ["b", "a"]
    assert [r.id for r in await evaluations.list("m@3")] == []
    assert [r.id for r in await evaluations.list(limit=1)] == ["b"]
    too_many = run("c", 0.8, 0.7)
    too_many.targets.extend([too_many.targets[0]] * 16)
    with pytest.raises(InvalidArgument):
        await evaluations.record(too_many)
    with pytest.raises(InvalidArgument):
        await evaluations.record(run("x" * 129, 0.8, 0.7))


async def test_evaluation_runs_recorded_at_once_by_two_replicas_all_land(
    sqlite_store: RegistryStore, tmp_path: Path
) -> None:
    """Each record reads (is it a repeat?) before it writes; on SQLite a deferred read
    could not become a write once the other replica had committed ("database is
    locked" at once, as INTERNAL: seen in the gRPC fuzz), so it takes the lock first."""
    other = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", poll_interval_s=0.2)
    try:
        stores = [EvaluationStore(sqlite_store.engine), EvaluationStore(other.engine)]
        stored = await asyncio.gather(
            *(stores[i % 2].record(run(f"run-{i}", 0.8, 0.7)) for i in range(40))
        )
        listed = await stores[0].list(limit=100)
    finally:
        await other.close()
    assert all(stored)
    assert len(listed) == 40


async def test_the_evaluation_gate_holds_the_rollout_until_a_run_passes(
    sqlite_store: RegistryStore,
) -> None:
    gate = P.EvaluationGate(metric="exact_match", min_delta=0.05)
    stored, _ = await sqlite_store.put_route(rollout_route(evaluation_gate=gate))
    assert stored.rollout_status.state == P.ROLLOUT_STATE_PENDING
    assert weights(stored) == {"old": 100.0, "new": 0.0}
    controller = RolloutController(sqlite_store)
    assert await controller.tick(later()) == 0
    assert "waiting for an evaluation run" in controller.waiting["chat"]
    await EvaluationStore(sqlite_store.engine).record(run("good", 0.8, 0.7))
    assert await controller.tick(later()) == 1
    route = await sqlite_store.get_route("chat")
    assert route.rollout_status.state == P.ROLLOUT_STATE_PROGRESSING
    assert weights(route) == {"old": 90.0, "new": 10.0}
    assert "exact_match 0.8 - 0.7" in route.rollout_status.history[-1].reason
