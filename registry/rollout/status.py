"""A rollout's status on its route: start, carry over, apply a decision, set arm weights.

Pure functions on Route messages; the store and the controller decide when to call them.
The registry owns `Route.rollout_status` and the two rollout arms' weights: a client's
copies are replaced.
"""

from __future__ import annotations

from datetime import datetime

from modelyard.v1 import model_pb2

MAX_HISTORY = 100
CONTROLLER = "controller"
# States the controller evaluates every tick.
ACTIVE = (model_pb2.ROLLOUT_STATE_PENDING, model_pb2.ROLLOUT_STATE_PROGRESSING)


def has_rollout(route: model_pb2.Route) -> bool:
    return route.HasField("rollout")


def arm_models(route: model_pb2.Route) -> tuple[str, str]:
    """(canary model ref, baseline model ref) as the arms name them."""
    by_name = {arm.name: arm.model for arm in route.arms}
    return by_name.get(route.rollout.canary_arm, ""), by_name.get(route.rollout.baseline_arm, "")


def needs_restart(old: model_pb2.Route | None, new: model_pb2.Route) -> bool:
    """A new or changed policy, or other models on its arms, starts the rollout over."""
    if old is None or not has_rollout(old) or not old.HasField("rollout_status"):
        return True
    same_policy = old.rollout.SerializeToString(
        deterministic=True
    ) == new.rollout.SerializeToString(deterministic=True)
    return not same_policy or arm_models(old) != arm_models(new)


def set_server_fields(route: model_pb2.Route, old: model_pb2.Route | None, now: datetime) -> None:
    """Fill in what the registry owns on a route being put (after validation)."""
    if not has_rollout(route):
        route.ClearField("rollout_status")
        return
    route.ClearField("rollout_status")  # a client's copy is never read
    if needs_restart(old, route):
        if old is not None and has_rollout(old):
            route.rollout_status.history.extend(old.rollout_status.history)  # kept across
        start(route, now, actor=CONTROLLER)
    else:
        assert old is not None
        route.rollout_status.CopyFrom(old.rollout_status)
        apply_weights(route)


def start(route: model_pb2.Route, now: datetime, *, actor: str, reason: str = "") -> None:
    """From the beginning: PENDING while an evaluation gate waits, else step 0."""
    gated = bool(route.rollout.evaluation_gate.metric)
    status = model_pb2.RolloutStatus(
        state=model_pb2.ROLLOUT_STATE_PENDING if gated else model_pb2.ROLLOUT_STATE_PROGRESSING,
        step=0,
        canary_percent=0.0 if gated else route.rollout.steps_percent[0],
        history=route.rollout_status.history,
    )
    status.step_started_at.FromDatetime(now)
    route.rollout_status.CopyFrom(status)
    if not reason:
        gate = route.rollout.evaluation_gate
        reason = (
            f"waiting for an offline evaluation: {gate.metric} canary - baseline >= "
            f"{gate.min_delta:g}"
            if gated
            else f"rollout started at {status.canary_percent:g}%"
        )
    record(route, model_pb2.ROLLOUT_ACTION_START, 0, now, reason=reason, actor=actor)


def record(
    route: model_pb2.Route,
    action: model_pb2.RolloutAction.ValueType,
    from_step: int,
    now: datetime,
    *,
    reason: str,
    actor: str,
) -> None:
    """Append a decision for the status as it now stands and set the weights to match."""
    status = route.rollout_status
    decision = model_pb2.RolloutDecision(
        action=action,
        from_step=from_step,
        to_step=status.step,
        canary_percent=status.canary_percent,
        reason=reason,
        actor=actor,
    )
    decision.at.FromDatetime(now)
    status.history.append(decision)
    if len(status.history) > MAX_HISTORY:
        del status.history[: len(status.history) - MAX_HISTORY]
    apply_weights(route)


def move(
    route: model_pb2.Route,
    state: model_pb2.RolloutState.ValueType,
    step: int,
    percent: float,
    now: datetime,
) -> int:
    """Set state, step and share (a new step window starts); returns the step before."""
    status = route.rollout_status
    before = status.step
    status.state, status.step, status.canary_percent = state, step, percent
    status.step_started_at.FromDatetime(now)
    return before


def apply_weights(route: model_pb2.Route) -> None:
    """Canary p, baseline 100 - p, as the status says."""
    percent = route.rollout_status.canary_percent
    for arm in route.arms:
        if arm.name == route.rollout.canary_arm:
            arm.weight = percent
        elif arm.name == route.rollout.baseline_arm:
            arm.weight = 100.0 - percent


def apply_decision(
    route: model_pb2.Route,
    action: model_pb2.RolloutAction.ValueType,
    now: datetime,
    *,
    reason: str,
    actor: str = CONTROLLER,
) -> None:
    """The controller's own actions: START (a gate passed), ADVANCE, PROMOTE, ROLLBACK."""
    steps = route.rollout.steps_percent
    step = route.rollout_status.step
    if action == model_pb2.ROLLOUT_ACTION_START:
        before = move(route, model_pb2.ROLLOUT_STATE_PROGRESSING, 0, steps[0], now)
    elif action == model_pb2.ROLLOUT_ACTION_ADVANCE:
        before = move(route, model_pb2.ROLLOUT_STATE_PROGRESSING, step + 1, steps[step + 1], now)
    elif action == model_pb2.ROLLOUT_ACTION_PROMOTE:
        before = move(route, model_pb2.ROLLOUT_STATE_SUCCEEDED, len(steps) - 1, 100.0, now)
    elif action == model_pb2.ROLLOUT_ACTION_ROLLBACK:
        before = move(route, model_pb2.ROLLOUT_STATE_ROLLED_BACK, step, 0.0, now)
    else:
        raise ValueError(f"not a controller action: {action}")
    record(route, action, before, now, reason=reason, actor=actor)
