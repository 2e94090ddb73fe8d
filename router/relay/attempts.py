"""Which candidates a request tries, in order, what one try can come to, and the log
of failures that becomes the client's error when no try succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from modelyard.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
)
from router.catalog import Target
from router.relay.calls import OpenCall
from router.relay.silence import SilenceWatch
from router.relay.stream import WorkerEvent
from router.scheduling.types import Candidate, CycleState
from router.workers import WorkerHandle

# Filters whose rejections mean "nothing can ever serve this request as asked", as
# opposed to "no worker can serve it right now".
REQUEST_FILTERS = frozenset({"capability", "cost_ceiling", "latency_ceiling"})


@dataclass(frozen=True)
class Scheduled:
    """One scheduling cycle over a group of models: candidates best first, and why the
    others were dropped."""

    ordered: Sequence[Candidate]
    cycle: CycleState
    handles: Mapping[str, WorkerHandle]


@dataclass(frozen=True)
class Attempt:
    number: int  # 1 for the first try of the request
    cand: Candidate
    handle: WorkerHandle


def attempts(
    groups: Iterable[Scheduled], log: AttemptLog, *, per_model: int, total: int
) -> Iterator[Attempt]:
    """The candidates to try: each group's best `per_model`, `total` at most in all.

    `groups` is lazy (the target's models, then each fallback): a group is scheduled only
    once the ones before it are used up, so it sees the breakers those tries moved.
    """
    number = 0
    for group in groups:
        if not group.ordered:
            log.rejected(group.cycle)
            continue
        for cand in group.ordered[:per_model]:
            if number >= total:
                return
            number += 1
            yield Attempt(number, cand, group.handles[cand.worker])


# --- what one try comes to ---------------------------------------------------------------


@dataclass(frozen=True)
class Committed:
    """The worker sent its first token (or finished): the stream is this worker's now."""

    attempt: Attempt
    head: list[WorkerEvent]
    events: AsyncIterator[WorkerEvent]
    opened_at: float  # when the worker call was opened (the worker's own TTFT starts)
    route_ms: float  # from the request's arrival to the call
    watch: SilenceWatch  # the attempt's silence bounds, carried on into the relay
    call: OpenCall  # closed by the request's cleanup, or at its end with its code


@dataclass(frozen=True)
class Retryable:
    """Failed before any token: the next candidate may do better."""

    failure: str  # "address (why)", for the final error
    # A full queue or budget on one worker says nothing about the others, and nothing
    # about the worker's health: its breaker does not hear of it.
    exhausted: ModelyardError | None = None
    # The worker sent nothing within the silence timeout: ejected, not just counted.
    silent: bool = False

    @property
    def worker_failed(self) -> bool:
        return self.exhausted is None


@dataclass(frozen=True)
class Fatal:
    """An answer that holds on every worker (a bad request stays bad)."""

    error: ModelyardError


Outcome = Committed | Retryable | Fatal


# --- the attempt log ----------------------------------------------------------------------


@dataclass
class AttemptLog:
    """What each candidate and scheduling cycle said, for the error a client sees."""

    failures: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    request_only: bool = True  # every rejection so far was about the request itself
    exhausted: list[ModelyardError] = field(default_factory=list)
    blamed: set[str] = field(default_factory=set)  # request fields the rejections name

    def rejected(self, cycle: CycleState) -> None:
        self.rejections.append(cycle.describe_rejections())
        self.request_only &= set(cycle.rejected) <= REQUEST_FILTERS
        self.blamed |= cycle.blamed

    def retryable(self, outcome: Retryable) -> None:
        self.failures.append(outcome.failure)
        if outcome.exhausted is not None:
            self.exhausted.append(outcome.exhausted)

    def deadline_error(self, target: Target) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"deadline passed while routing {target.name}; tried "
            + ("; ".join(self.failures) or "no worker")
        )

    def final_error(self, target: Target, workers: Sequence[str]) -> ModelyardError:
        """Why no candidate served the request, once every attempt is spent."""
        if not self.failures and self.rejections and self.request_only:
            message = f"no candidate for {target.name} meets the request: " + "; ".join(
                self.rejections
            )
            # One field to blame for every rejection: name it, as a bad argument would be.
            (blamed,) = self.blamed if len(self.blamed) == 1 else ("",)
            violations = [FieldViolation(blamed, message)] if blamed else []
            return FailedPrecondition(message, reason="NO_CANDIDATE", violations=violations)
        if self.exhausted and len(self.exhausted) == len(self.failures):
            # Every worker tried was full: tell the client to back off, not that the
            # model is down. The last worker's details (retry delay) go along.
            last = self.exhausted[-1]
            return ResourceExhausted(
                f"every worker for {target.name} is at capacity: " + "; ".join(self.failures),
                reason=last.reason,
                metadata=last.metadata,
                retry_after_s=last.retry_after_s,
            )
        return Unavailable(
            f"no worker could serve {target.name}: "
            + "; ".join(self.failures + [r for r in self.rejections if r]),
            reason="NO_WORKER_AVAILABLE",
            metadata={"workers": ",".join(workers)},
        )
