"""A direct stream's reported outcome, into the same accounting as a proxied request's:
breakers, latency estimates, the prefix history, stats, metrics and outcome shipping.

What the router decided (model, route, arm, attempt, client) comes from its own record
of the pick, never from the report; the report says only how the call went. Cost has one
owner, the router: from the model's registered prices and the reported usage.
"""

from __future__ import annotations

import dataclasses
import math

import grpc

from modelyard.genai import operation_name
from modelyard.pricing import cost_of
from modelyard.refs import key_of
from modelyard.v1 import common_pb2, router_pb2
from router.accounting import Accounting
from router.direct.pending import Pick
from router.state.prefix_history import PrefixHistory
from router.stats import Outcome

_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}


def code_name(status_code: int) -> str:
    return _CODE_NAMES.get(status_code, "UNKNOWN")


def _ms(value: float) -> float:
    """A reported duration fit for an estimate: finite and not negative, else 0."""
    return value if math.isfinite(value) and value > 0 else 0.0


def account(
    acct: Accounting, history: PrefixHistory, pick: Pick, report: router_pb2.ReportOutcomeRequest
) -> None:
    code = code_name(report.status_code)
    model = pick.model
    outcome = Outcome(
        model=model.name,
        version=model.version,
        route=pick.route,
        arm=pick.arm,
        ok=code == "OK",
        usage=report.usage,
        client=pick.client,
        attempt=pick.attempt,
    )
    if code != "OK":
        if code == "UNAVAILABLE":  # as a proxied attempt that failed: the breaker hears it
            acct.attempt_failed(pick.worker)
        acct.failed(pick.request_id, outcome, code)
        return
    timings = common_pb2.Timings(
        queue_ms=_ms(report.timings.queue_ms),
        load_ms=_ms(report.timings.load_ms),
        ttft_ms=_ms(report.timings.ttft_ms),
        decode_ms=_ms(report.timings.decode_ms),
        total_ms=_ms(report.timings.total_ms),
        decode_tokens_per_second=_ms(report.timings.decode_tokens_per_second),
        route_ms=pick.route_ms,
    )
    if report.usage.output_tokens:
        acct.first_token(
            pick.worker,
            key_of(model),
            ewma_ms=timings.ttft_ms,
            client_ms=pick.route_ms + timings.ttft_ms,
        )
    if not pick.prefix_precise:
        history.record(key_of(model), pick.worker, pick.prefix)
    finished = common_pb2.GenerationFinished(
        finish_reason=report.finish_reason,
        usage=report.usage,
        timings=timings,
        cost=cost_of(model.pricing, report.usage),
    )
    outcome = dataclasses.replace(
        outcome,
        cost_usd=finished.cost.total_usd,
        ttft_ms=pick.route_ms + timings.ttft_ms,
        total_ms=pick.route_ms + timings.total_ms,
    )
    acct.finished(
        pick.request_id, pick.worker, outcome, finished, operation=operation_name(pick.chat)
    )
