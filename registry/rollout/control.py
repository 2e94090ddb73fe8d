"""An operator's action on a rollout (ControlRollout): which states it may leave, and
what it does. Pure: the store applies the edited route in one write."""

from __future__ import annotations

from datetime import datetime

from modelyard.errors import FailedPrecondition, InvalidArgument
from modelyard.v1 import model_pb2, registry_pb2
from registry.rollout import status as rollout_status

MAX_REASON_BYTES = 512
S = model_pb2
_RUNNING: tuple[model_pb2.RolloutState.ValueType, ...] = (
    S.ROLLOUT_STATE_PENDING,
    S.ROLLOUT_STATE_PROGRESSING,
)
# action -> (states it may be taken from, the decision it records)
RULES: dict[
    registry_pb2.RolloutControl.ValueType,
    tuple[tuple[model_pb2.RolloutState.ValueType, ...], model_pb2.RolloutAction.ValueType],
] = {
    registry_pb2.ROLLOUT_CONTROL_PAUSE: (_RUNNING, S.ROLLOUT_ACTION_PAUSE),
    registry_pb2.ROLLOUT_CONTROL_RESUME: ((S.ROLLOUT_STATE_PAUSED,), S.ROLLOUT_ACTION_RESUME),
    registry_pb2.ROLLOUT_CONTROL_ABORT: (
        (*_RUNNING, S.ROLLOUT_STATE_PAUSED),
        S.ROLLOUT_ACTION_ABORT,
    ),
    registry_pb2.ROLLOUT_CONTROL_RESTART: (
        (S.ROLLOUT_STATE_ROLLED_BACK, S.ROLLOUT_STATE_ABORTED),
        S.ROLLOUT_ACTION_START,
    ),
}


def check_request(action: registry_pb2.RolloutControl.ValueType, reason: str) -> None:
    if action not in RULES:
        raise InvalidArgument.for_field(
            "action", "must be ROLLOUT_CONTROL_PAUSE, _RESUME, _ABORT or _RESTART"
        )
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise InvalidArgument.for_field("reason", f"at most {MAX_REASON_BYTES} bytes")


def control(
    route: model_pb2.Route,
    action: registry_pb2.RolloutControl.ValueType,
    now: datetime,
    *,
    actor: str,
    reason: str,
) -> model_pb2.Route:
    """The route after the action; FAILED_PRECONDITION when its state cannot take it."""
    name = registry_pb2.RolloutControl.Name(action).removeprefix("ROLLOUT_CONTROL_").lower()
    if not rollout_status.has_rollout(route):
        raise FailedPrecondition(
            f"route {route.name!r} has no rollout; put one with `modelyard routes put "
            "--rollout-canary ...`",
            reason="NO_ROLLOUT",
            metadata={"route": route.name},
        )
    allowed, decision = RULES[action]
    state = route.rollout_status.state
    if state not in allowed:
        can = ", ".join(S.RolloutState.Name(s).removeprefix("ROLLOUT_STATE_") for s in allowed)
        raise FailedPrecondition(
            f"cannot {name} the rollout of route {route.name!r}: it is "
            f"{S.RolloutState.Name(state).removeprefix('ROLLOUT_STATE_')}; {name} needs {can}",
            reason="ROLLOUT_STATE",
            metadata={"route": route.name, "state": S.RolloutState.Name(state)},
        )
    edited = model_pb2.Route()
    edited.CopyFrom(route)
    note = reason or f"{name} by {actor}"
    if action == registry_pb2.ROLLOUT_CONTROL_RESTART:
        rollout_status.start(edited, now, actor=actor, reason=note)
        return edited
    status = edited.rollout_status
    step, percent = status.step, status.canary_percent
    if action == registry_pb2.ROLLOUT_CONTROL_PAUSE:
        status.state = S.ROLLOUT_STATE_PAUSED
    elif action == registry_pb2.ROLLOUT_CONTROL_RESUME:
        # Paused before the gate passed (no share yet): back to waiting for it.
        gated = percent == 0 and bool(edited.rollout.evaluation_gate.metric)
        state_after = S.ROLLOUT_STATE_PENDING if gated else S.ROLLOUT_STATE_PROGRESSING
        rollout_status.move(edited, state_after, step, percent, now)  # the window restarts
    else:
        rollout_status.move(edited, S.ROLLOUT_STATE_ABORTED, step, 0.0, now)
    rollout_status.record(edited, decision, step, now, reason=note, actor=actor)
    return edited
