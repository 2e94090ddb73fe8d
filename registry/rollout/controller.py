"""The rollout controller: a background task of the leading registry that, every
interval, reads each running rollout's step window, decides, and applies the decision as
one catalogue write (so the revision moves and routers follow through Watch).

It never runs on a request path. A decision is computed from a read, then applied only if
the route's rollout is still where it was read (an operator's ControlRollout or a new
PutRoute in between wins, and the next tick decides again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.v1 import model_pb2
from registry.rollout import status as rollout_status
from registry.rollout.decide import StepDecision, decide
from registry.rollout.edit import RouteEdit, RouteEdited
from registry.rollout.gate import check_gate, resolve_ref
from registry.rollout.leader import Leadership
from registry.rollout.window import read_window

log = logging.getLogger(__name__)


class RouteStore(Protocol):
    """The parts of `registry.store.RegistryStore` the controller uses."""

    engine: AsyncEngine

    async def edit_route(
        self, name: str, edit: RouteEdit
    ) -> tuple[model_pb2.Route, int] | None: ...

    async def list_routes(self) -> RouteListing: ...


class RouteListing(Protocol):
    @property
    def routes(self) -> Sequence[model_pb2.Route]: ...


def _fingerprint(route: model_pb2.Route) -> bytes:
    """What a decision was read from: the policy, the arms and the status."""
    probe = model_pb2.Route(
        arms=route.arms, rollout=route.rollout, rollout_status=route.rollout_status
    )
    return probe.SerializeToString(deterministic=True)


class RolloutController:
    def __init__(self, store: RouteStore, *, leadership: Leadership | None = None) -> None:
        self._store = store
        self._sessions = async_sessionmaker(store.engine, expire_on_commit=False)
        self.leadership = leadership or Leadership(store.engine)
        self.waiting: dict[str, str] = {}  # route -> why it waits, for logs and tests

    async def tick(self, now: datetime) -> int:
        """One pass over the running rollouts; returns how many decisions it applied."""
        if not await self.leadership.hold():
            return 0
        routes = (await self._store.list_routes()).routes
        applied = 0
        for route in routes:
            if route.HasField("rollout") and route.rollout_status.state in rollout_status.ACTIVE:
                try:
                    applied += await self._step(route, now)
                except Exception:
                    log.exception("rollout of route %s: the decision failed", route.name)
        return applied

    async def _step(self, route: model_pb2.Route, now: datetime) -> int:
        async with self._sessions() as session:
            decision = await self._decide(session, route, now)
        if decision.action is None:
            if self.waiting.get(route.name) != decision.reason:
                log.info("rollout of route %s waits: %s", route.name, decision.reason)
            self.waiting[route.name] = decision.reason
            return 0
        self.waiting.pop(route.name, None)
        expected = _fingerprint(route)
        action = decision.action

        async def edit(
            session: AsyncSession, current: model_pb2.Route, at: datetime
        ) -> RouteEdited | None:
            if _fingerprint(current) != expected:
                return None  # moved since the read: decide again next tick
            changed = model_pb2.Route()
            changed.CopyFrom(current)
            rollout_status.apply_decision(changed, action, at, reason=decision.reason)
            promote = None
            if action == model_pb2.ROLLOUT_ACTION_PROMOTE and current.rollout.promote_on_success:
                promote = await resolve_ref(session, rollout_status.arm_models(current)[0])
            return RouteEdited(changed, promote)

        done = await self._store.edit_route(route.name, edit)
        if done is not None:
            log.info(
                "rollout of route %s: %s at revision %d (%s)",
                route.name,
                model_pb2.RolloutAction.Name(action),
                done[1],
                decision.reason,
            )
        return int(done is not None)

    async def _decide(
        self, session: AsyncSession, route: model_pb2.Route, now: datetime
    ) -> StepDecision:
        status = route.rollout_status
        if status.state == model_pb2.ROLLOUT_STATE_PENDING:
            return await check_gate(session, route, now)
        policy = route.rollout
        canary, baseline = await read_window(
            session,
            route.name,
            (policy.canary_arm, policy.baseline_arm),
            status.step_started_at.ToMilliseconds(),
        )
        return decide(policy, status, canary, baseline, now)


async def run_controller(controller: RolloutController, interval_s: float) -> None:
    """The registry's background task: a tick every `interval_s` until cancelled."""
    try:
        while True:
            try:
                await controller.tick(datetime.now().astimezone())
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be away for a while; the next tick tries again.
                log.exception("rollout controller tick failed; retrying in %.1fs", interval_s)
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(Exception):
            await controller.leadership.release()


def start_controller(controller: RolloutController, interval_s: float) -> asyncio.Task[None]:
    return asyncio.create_task(run_controller(controller, interval_s), name="rollout-controller")


async def stop_controller(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
