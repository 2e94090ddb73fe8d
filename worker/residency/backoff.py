"""When a model whose load failed may be loaded on demand again.

A broken artifact (wrong digest, unreachable server, bad options) is not fetched again for
every request that names it: on-demand loads wait out an exponential backoff, and the
requests in between get FAILED_PRECONDITION with the reason and the retry time. An
operator's LoadModel still tries at once (they may just have fixed the cause).
"""

from __future__ import annotations

import time

from modelyard.errors import DeadlineExceeded, FailedPrecondition, ResourceExhausted
from modelyard.refs import ModelKey
from worker.residency.state import ResidencyState, Resident

RETRY_BASE_S = 5.0
RETRY_MAX_S = 300.0


def transient(err: BaseException) -> bool:
    """A load that failed for want of room now (other models busy in the budget), ran out
    of its caller's time or was cancelled: nothing about the model itself."""
    if isinstance(err, ResourceExhausted):
        return err.reason != "MODEL_TOO_LARGE"  # larger than the whole budget: never fits
    return isinstance(err, DeadlineExceeded) or not isinstance(err, Exception)


def note_failure(r: Resident, err: BaseException) -> None:
    """After a failed load: a transient failure leaves the model COLD, so routers keep
    sending it here once there is room (they avoid FAILED models); any other makes it
    FAILED and counts toward the backoff."""
    if transient(err):
        r.state = ResidencyState.COLD
        return
    r.state = ResidencyState.FAILED
    r.failures += 1
    r.retry_at = time.monotonic() + min(RETRY_BASE_S * 2 ** (r.failures - 1), RETRY_MAX_S)


def note_success(r: Resident) -> None:
    r.failures, r.retry_at = 0, 0.0


def backoff_refusal(key: ModelKey, r: Resident | None) -> FailedPrecondition | None:
    """The refusal for an on-demand load of a FAILED model still backing off, else None."""
    if r is None or r.state is not ResidencyState.FAILED:
        return None
    wait_s = r.retry_at - time.monotonic()
    if wait_s <= 0:
        return None
    return FailedPrecondition(
        f"model {key} failed to load {r.failures} time(s) in a row ({r.error}); the next "
        f"on-demand load is allowed in {wait_s:.0f} s (LoadModel retries at once)",
        reason="LOAD_BACKOFF",
        metadata={"model": key},
        retry_after_s=wait_s,
    )
