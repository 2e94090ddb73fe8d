"""The rollout part of `modelyard routes`: the policy flags of `routes put`, the
`routes rollout ROUTE pause|resume|abort|restart` command, and what `routes show` prints
about a rollout (state, the canary's share, the decision history)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

import typer
from rich.table import Table

from modelyard.cli.connect import PLAINTEXT, AdminTokenOpt, tls_options
from modelyard.cli.models import RegistryOpt, call, enum_value, registry_stub, short
from modelyard.cli.output import cli_errors, console, print_table
from modelyard.errors import InvalidArgument
from modelyard.tls import TlsSettings
from modelyard.v1 import model_pb2, registry_pb2

CanaryOpt = Annotated[
    str | None, typer.Option("--rollout-canary", help="Arm whose share a rollout grows.")
]
BaselineOpt = Annotated[
    str | None, typer.Option("--rollout-baseline", help="Arm the canary is compared to.")
]
StepsOpt = Annotated[
    str | None,
    typer.Option("--rollout-steps", help="Canary share per step in percent, e.g. 1,5,25,50,100."),
]
MinSecondsOpt = Annotated[
    int | None, typer.Option("--rollout-min-seconds", help="Shortest step (1..86400 s).")
]
MinRequestsOpt = Annotated[
    int | None, typer.Option("--rollout-min-requests", help="Requests per arm before a step ends.")
]
ErrorRateOpt = Annotated[
    float | None,
    typer.Option(help="Guard: canary error rate minus the baseline's at most this (0..1)."),
]
TtftRatioOpt = Annotated[
    float | None, typer.Option(help="Guard: canary TTFT p95 / baseline's at most this.")
]
CostRatioOpt = Annotated[
    float | None, typer.Option(help="Guard: canary cost per request / baseline's at most this.")
]
FeedbackOpt = Annotated[
    float | None, typer.Option(help="Guard: canary mean feedback minus baseline's at least this.")
]
PromoteOpt = Annotated[
    bool | None,
    typer.Option("--promote/--no-promote", help="Set the canary's version to production at 100%."),
]


@dataclass(frozen=True)
class RolloutFlags:
    """The rollout flags of `routes put`, named as its parameters are."""

    rollout_canary: str | None = None
    rollout_baseline: str | None = None
    rollout_steps: str | None = None
    rollout_min_seconds: int | None = None
    rollout_min_requests: int | None = None
    max_error_rate_increase: float | None = None
    max_ttft_p95_ratio: float | None = None
    max_cost_ratio: float | None = None
    min_feedback_delta: float | None = None
    promote: bool | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> RolloutFlags:
        """Picked from a command's parameters (its `locals()`)."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def apply(self, route: model_pb2.Route) -> None:
        """The flags that were given, over what the file said (nothing given: no change)."""
        if all(getattr(self, f.name) is None for f in fields(self)):
            return
        policy = route.rollout
        policy.SetInParent()
        if self.rollout_canary is not None:
            policy.canary_arm = self.rollout_canary
        if self.rollout_baseline is not None:
            policy.baseline_arm = self.rollout_baseline
        if self.rollout_steps is not None:
            policy.steps_percent[:] = parse_steps(self.rollout_steps)
        if self.rollout_min_seconds is not None:
            policy.min_step_seconds = self.rollout_min_seconds
        if self.rollout_min_requests is not None:
            policy.min_requests = self.rollout_min_requests
        for name in (
            "max_error_rate_increase",
            "max_ttft_p95_ratio",
            "max_cost_ratio",
            "min_feedback_delta",
        ):
            value = getattr(self, name)
            if value is not None:
                setattr(policy, name, value)
        if self.promote is not None:
            policy.promote_on_success = self.promote


def parse_steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise InvalidArgument.for_field(
            "--rollout-steps", f"{text!r}: use percentages separated by commas, e.g. 5,25,100"
        ) from err


ACTIONS = ("pause", "resume", "abort", "restart")


@tls_options
def control_rollout(
    route: Annotated[str, typer.Argument(help="Route name.")],
    action: Annotated[str, typer.Argument(help="pause | resume | abort | restart")],
    reason: Annotated[str, typer.Option(help="Why, recorded in the route's history.")] = "",
    registry: RegistryOpt = "127.0.0.1:50051",
    admin_token: AdminTokenOpt = "",
    tls: TlsSettings = PLAINTEXT,
) -> None:
    """Pause, resume, abort or restart a route's rollout."""
    with cli_errors(), registry_stub(registry, tls) as stub:
        control = registry_pb2.RolloutControl.ValueType(
            enum_value(registry_pb2.RolloutControl, "ROLLOUT_CONTROL_", action, "action")
        )
        request = registry_pb2.ControlRolloutRequest(route=route, action=control, reason=reason)
        reply = call(stub.ControlRollout, request, admin_token)
    console.print(f"route {route}: rollout {action} (revision {reply.revision})")
    print_rollout(reply.route)


def print_rollout(route: model_pb2.Route) -> None:
    """The rollout's policy, where it stands and its decisions; nothing without one."""
    if not route.HasField("rollout"):
        return
    policy, status = route.rollout, route.rollout_status
    state = short(model_pb2.RolloutState, "ROLLOUT_STATE_", status.state)
    steps = ", ".join(f"{p:g}%" for p in policy.steps_percent)
    console.print(
        f"rollout: {policy.canary_arm} against {policy.baseline_arm}, steps {steps}; "
        f"{state} at step {status.step}, canary {status.canary_percent:g}% "
        f"since {status.step_started_at.ToJsonString()}",
        highlight=False,
    )
    table = Table("at", "action", "step", "canary", "actor", "reason", title="rollout history")
    for d in status.history:
        table.add_row(
            d.at.ToJsonString(),
            short(model_pb2.RolloutAction, "ROLLOUT_ACTION_", d.action),
            f"{d.from_step} -> {d.to_step}",
            f"{d.canary_percent:g}%",
            d.actor,
            d.reason,
        )
    print_table(table)
