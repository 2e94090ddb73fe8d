"""Forward one generation to a worker and relay its stream back, event by event.

Order of candidates comes from the scheduling framework (router/scheduling): the
target's models first, then the route's fallback models, each scheduled afresh.
Rules: the caller's deadline travels to the worker, cancelling the relay cancels
the worker call, a worker that is unreachable (or fails) before the first token
is replaced by the next candidate, and a failure after it ends the stream with
UNAVAILABLE: text already sent is never sent twice. The worker's
GenerationStarted is held back until its first token (or its finish), so a
retried request still shows the client exactly one GenerationStarted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing

import grpc
from opentelemetry import trace

from modelyard.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2
from router.accounting import Accounting
from router.catalog import Catalog, Target, label
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.types import (
    DEFAULT_MAX_TOKENS,
    Candidate,
    Request,
    estimate_prompt_tokens,
)
from router.stats import Outcome
from router.workers import WorkerHandle, WorkerPool

log = logging.getLogger(__name__)
tracer = trace.get_tracer("modelyard.router")

MAX_REQUEST_ID_LENGTH = 128


def request_id_of(given: str) -> str:
    """The client's request id, or a fresh one; INVALID_ARGUMENT when too long."""
    if len(given) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.for_field(
            "request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters, got {len(given)}"
        )
    return given or uuid.uuid4().hex


class StreamBroken(Unavailable):
    """The worker failed after tokens reached the client; `usage` counts what was sent."""

    def __init__(self, message: str, *, usage: common_pb2.Usage) -> None:
        super().__init__(message, reason="WORKER_FAILED_MID_STREAM")
        self.usage = usage


class _NoFinish(Exception):
    """The worker closed its stream without a GenerationFinished."""


def worker_request(
    request: router_pb2.GenerateRequest,
    model: model_pb2.Model,
    request_id: str,
    attempt: int,
    target: Target | None = None,
) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        request_id=request_id,
        model=model,
        prompt=request.prompt,
        messages=request.messages,
        sampling=request.sampling,
        priority=request.priority,
        load_if_cold=True,
        route=target.route if target else "",
        arm=target.arm if target else "",
        attempt=attempt,
    )


def scheduling_request(
    request: router_pb2.GenerateRequest, request_id: str, target: Target
) -> Request:
    """The scheduler's view of a request: its hints, over the route's defaults."""
    hints = request.hints
    return Request(
        request_id=request_id,
        chat=bool(request.messages),
        prompt_tokens=estimate_prompt_tokens(request.prompt, request.messages),
        max_tokens=request.sampling.max_tokens or DEFAULT_MAX_TOKENS,
        objective=hints.objective or target.objective or common_pb2.OBJECTIVE_BALANCED,
        max_ttft_ms=hints.max_ttft_ms if hints.HasField("max_ttft_ms") else target.max_ttft_ms,
        max_cost_per_1k=(
            hints.max_cost_per_1k_tokens
            if hints.HasField("max_cost_per_1k_tokens")
            else target.max_cost_per_1k
        ),
        required_tags=tuple(hints.required_tags),
        min_context_length=hints.min_context_length,
        session_key=hints.session_key,
    )


# Filters whose rejections mean "nothing can ever serve this request as asked", as
# opposed to "no worker can serve it right now".
_REQUEST_FILTERS = frozenset({"capability", "cost_ceiling", "latency_ceiling"})
# Before the first token these move on to the next candidate; anything else is the
# answer (a bad request stays bad on every worker). None: the stream ended early.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, None})


class Relay:
    """Runs one generation: resolve, schedule, stream from the first candidate that
    answers, then the route's fallbacks; report every outcome to the accounting."""

    def __init__(
        self,
        catalog: Catalog,
        pool: WorkerPool,
        *,
        profiles: Mapping[common_pb2.Objective.ValueType, Profile],
        accounting: Accounting,
        max_attempts: int = 3,
        max_total_attempts: int = 6,
        connect_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._profiles = profiles
        self._acct = accounting
        self._max_attempts = max_attempts
        self._max_total_attempts = max(max_total_attempts, max_attempts)
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        # This router's open streams per worker: the pushed status lags behind them.
        self._in_flight: Counter[str] = Counter()

    def candidates(
        self, models: Sequence[model_pb2.Model]
    ) -> tuple[list[Candidate], dict[str, WorkerHandle]]:
        handles = {h.address: h for h in self._pool.workers}
        breakers = self._acct.breakers
        cands: list[Candidate] = []
        for model in models:
            model_label = label(model)
            for h in handles.values():
                status = h.status
                estimate = self._acct.latency.get(h.address, model_label)
                cands.append(
                    Candidate(
                        worker=h.address,
                        worker_id=h.worker_id,
                        model=model,
                        residency=h.residency(model),
                        healthy=h.watching,
                        breaker=breakers.state(h.address),
                        breaker_allows=breakers.allows(h.address),
                        queued_tokens=h.queued_tokens(),
                        running_sequences=status.running_sequences if status else 0,
                        in_flight=self._in_flight[h.address],
                        memory_budget_bytes=status.memory_budget_bytes if status else 0,
                        memory_used_bytes=status.memory_used_bytes if status else 0,
                        ttft_ms=estimate.ttft_ms,
                        inter_token_ms=estimate.inter_token_ms,
                    )
                )
        return cands, handles

    async def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """Stream the generation; `timeout_s` is what is left of the caller's deadline."""
        started_at = self._clock()
        deadline = None if timeout_s is None else started_at + timeout_s
        request_id = request_id_of(request.request_id)
        with tracer.start_as_current_span(
            "router.route",
            attributes={
                "gen_ai.request.model": request.model or "auto",
                "modelyard.request_id": request_id,
            },
        ) as span:
            target = await self._catalog.target(
                request.model,
                chat=bool(request.messages),
                hints=request.hints,
                timeout_s=self._left(deadline),
            )
            if len(target.models) == 1:
                span.set_attribute("modelyard.model", label(target.models[0]))
            if target.route:
                span.set_attribute("modelyard.route", target.route)
                span.set_attribute("modelyard.arm", target.arm)
            if not self._pool.workers:
                raise Unavailable(
                    "the router has no workers; start it with --worker host:port",
                    reason="NO_WORKERS",
                )
            req = scheduling_request(request, request_id, target)
            profile = self._profiles[req.objective]
            failures: list[str] = []
            rejections: list[str] = []
            request_only = True  # every rejection so far was about the request itself
            exhausted: list[ModelyardError] = []  # RESOURCE_EXHAUSTED answers, in order
            attempt = 0
            groups = [target.models, *((m,) for m in target.fallbacks)]
            for models in groups:
                cands, handles = self.candidates(models)
                decision = run_cycle(profile, req, cands)
                if not decision.ordered:
                    rejections.append(decision.cycle.describe_rejections())
                    request_only &= set(decision.cycle.rejected) <= _REQUEST_FILTERS
                    continue
                for cand in decision.ordered[: self._max_attempts]:
                    if attempt >= self._max_total_attempts:
                        break
                    attempt += 1
                    if attempt > 1:
                        self._acct.retried()
                    handle = handles[cand.worker]
                    left = self._check_deadline(deadline, target, failures)
                    connect_s = min(self._connect_timeout_s, math.inf if left is None else left)
                    try:
                        await handle.connect(connect_s)
                    except TimeoutError:
                        failures.append(f"{handle.address} (not reachable within {connect_s:.1f}s)")
                        log.warning("worker %s not reachable for %s", handle.address, request_id)
                        self._acct.attempt_failed(cand.worker)
                        continue
                    self._acct.breakers.on_attempt(cand.worker)
                    route_ms = (self._clock() - started_at) * 1000
                    opened_at = self._clock()
                    call = handle.stub.Generate(
                        worker_request(request, cand.model, request_id, attempt, target),
                        timeout=self._left(deadline),
                        wait_for_ready=False,
                    )
                    self._in_flight[cand.worker] += 1
                    relay = _StreamRelay(handle, request_id, attempt, route_ms, target)
                    try:
                        try:
                            # Iterate (not call.read()): the OpenTelemetry client interceptor
                            # ends its span only when the response iterator is exhausted.
                            events = aiter(call)
                            head = await _read_until_first_token(events)
                        except (grpc.aio.AioRpcError, _NoFinish) as err:
                            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
                            if code is not None and code not in _RETRYABLE:
                                self._failed(request_id, target, cand.model, code.name)
                                raise from_rpc_error(err) from err
                            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                                # A full queue or budget on one worker says nothing about
                                # the others, and nothing about the worker's health.
                                exhausted.append(from_rpc_error(err))
                                failures.append(f"{handle.address} ({_describe(err)})")
                                continue
                            failures.append(f"{handle.address} ({_describe(err)})")
                            log.warning(
                                "worker %s failed before the first token of %s: %s",
                                handle.name,
                                request_id,
                                _describe(err),
                            )
                            self._acct.attempt_failed(cand.worker)
                            continue
                        now = self._clock()
                        self._acct.first_token(
                            cand.worker,
                            cand.model_label,
                            ewma_ms=(now - opened_at) * 1000,
                            client_ms=(now - started_at) * 1000,
                        )
                        span.set_attribute("modelyard.worker", handle.worker_id or handle.address)
                        span.set_attribute("modelyard.model", cand.model_label)
                        span.set_attribute("modelyard.attempt", attempt)
                        for event in head:
                            yield relay.convert(event, cand.model)
                        if head[-1].WhichOneof("event") == "finished":
                            await _drain(events)  # finished before any token (EOS first)
                        else:
                            async with aclosing(relay.rest(events, cand.model)) as rest:
                                async for out in rest:
                                    yield out
                        self._finished(request_id, target, cand, relay, started_at, now)
                        return
                    except ModelyardError as err:
                        if isinstance(err, StreamBroken):
                            self._acct.attempt_failed(cand.worker)
                        if relay.committed:
                            self._failed(request_id, target, cand.model, err.code.name, relay.usage)
                        raise
                    finally:
                        call.cancel()
                        self._in_flight[cand.worker] -= 1
                        if not self._in_flight[cand.worker]:
                            del self._in_flight[cand.worker]
            # A connect wait cut short by the caller's deadline is a deadline, not an outage.
            self._check_deadline(deadline, target, failures)
            primary = target.models[0] if len(target.models) == 1 else None
            if not failures and rejections and request_only:
                self._failed(request_id, target, primary, "FAILED_PRECONDITION")
                raise FailedPrecondition(
                    f"no candidate for {target.name} meets the request: " + "; ".join(rejections),
                    reason="NO_CANDIDATE",
                )
            if exhausted and len(exhausted) == len(failures):
                # Every worker tried was full: tell the client to back off, not that
                # the model is down. The last worker's details (retry delay) go along.
                self._failed(request_id, target, primary, "RESOURCE_EXHAUSTED")
                last = exhausted[-1]
                raise ResourceExhausted(
                    f"every worker for {target.name} is at capacity: " + "; ".join(failures),
                    reason=last.reason,
                    metadata=last.metadata,
                    retry_after_s=last.retry_after_s,
                )
            self._failed(request_id, target, primary, "UNAVAILABLE")
            raise Unavailable(
                f"no worker could serve {target.name}: "
                + "; ".join(failures + [r for r in rejections if r]),
                reason="NO_WORKER_AVAILABLE",
                metadata={"workers": ",".join(h.address for h in self._pool.workers)},
            )

    def _finished(
        self,
        request_id: str,
        target: Target,
        cand: Candidate,
        relay: _StreamRelay,
        started_at: float,
        first_token_at: float,
    ) -> None:
        done = relay.finished
        self._acct.finished(
            request_id,
            cand.worker,
            Outcome(
                model=cand.model.name,
                version=cand.model.version,
                route=target.route,
                arm=target.arm,
                usage=done.usage,
                cost_usd=done.cost.total_usd,
                ttft_ms=(first_token_at - started_at) * 1000,
                total_ms=(self._clock() - started_at) * 1000,
            ),
            done,
        )

    def _failed(
        self,
        request_id: str,
        target: Target,
        model: model_pb2.Model | None,
        code: str,
        usage: common_pb2.Usage | None = None,
    ) -> None:
        self._acct.failed(
            request_id,
            Outcome(
                model=model.name if model is not None else target.name,
                version=model.version if model is not None else "",
                route=target.route,
                arm=target.arm,
                ok=False,
                usage=usage,
            ),
            code,
        )

    def _check_deadline(
        self, deadline: float | None, target: Target, failures: list[str]
    ) -> float | None:
        """The seconds left, or DEADLINE_EXCEEDED once there are none."""
        left = self._left(deadline)
        if left is not None and left <= 0:
            raise DeadlineExceeded(
                f"deadline passed while routing {target.name}; tried "
                + ("; ".join(failures) or "no worker")
            )
        return left

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()


async def _read_until_first_token(
    events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse],
) -> list[worker_pb2.WorkerServiceGenerateResponse]:
    """Events up to and including the first delta (or the finish): nothing is relayed
    before this returns, so a failure in here can still go to another worker."""
    head: list[worker_pb2.WorkerServiceGenerateResponse] = []
    while True:
        event = await anext(events, None)
        if event is None:
            raise _NoFinish("stream ended before any token")
        kind = event.WhichOneof("event")
        if kind is None:
            continue  # an empty event from a newer worker: nothing to relay
        head.append(event)
        if kind in ("delta", "finished"):
            return head


async def _drain(events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]) -> None:
    """Read the stream to its end after the finish, so the call (and its client span) ends."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in events:
            pass


def cost_of(model: model_pb2.Model, usage: common_pb2.Usage) -> common_pb2.Cost:
    """The cost from the model's registered prices (when a worker did not fill it in)."""
    p = model.pricing
    input_usd = usage.input_tokens * p.input_usd_per_1k_tokens / 1000
    output_usd = usage.output_tokens * p.output_usd_per_1k_tokens / 1000
    return common_pb2.Cost(
        input_usd=input_usd, output_usd=output_usd, total_usd=input_usd + output_usd
    )


class _StreamRelay:
    """Converts one committed worker stream's events into the router's events."""

    def __init__(
        self,
        handle: WorkerHandle,
        request_id: str,
        attempt: int,
        route_ms: float,
        target: Target | None = None,
    ):
        self._handle = handle
        self._request_id = request_id
        self._attempt = attempt
        self._route_ms = route_ms
        self._target = target
        self.usage = common_pb2.Usage()
        self.finished = common_pb2.GenerationFinished()
        # True once an event reached the client: from then on no retry.
        self.committed = False

    def convert(
        self, event: worker_pb2.WorkerServiceGenerateResponse, model: model_pb2.Model
    ) -> router_pb2.GenerateResponse:
        self.committed = True
        kind = event.WhichOneof("event")
        if kind == "started":
            started = common_pb2.GenerationStarted()
            started.CopyFrom(event.started)
            started.request_id = self._request_id
            started.attempt = self._attempt
            started.model = started.model or model.name
            started.version = started.version or model.version
            if self._target is not None and self._target.route:
                started.route = self._target.route
                started.arm = self._target.arm
            if not started.worker_id:
                started.worker_id = self._handle.worker_id or self._handle.address
            return router_pb2.GenerateResponse(started=started)
        if kind == "delta":
            self.usage.output_tokens += len(event.delta.token_ids)
            return router_pb2.GenerateResponse(delta=event.delta)
        finished = self.finished
        finished.CopyFrom(event.finished)
        finished.timings.route_ms = self._route_ms
        if not finished.cost.total_usd:
            finished.cost.CopyFrom(cost_of(model, finished.usage))
        return router_pb2.GenerateResponse(finished=finished)

    async def rest(
        self,
        events: AsyncIterator[worker_pb2.WorkerServiceGenerateResponse],
        model: model_pb2.Model,
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """The events after the first token, until the finish."""
        while True:
            try:
                event = await anext(events, None)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise from_rpc_error(err) from err
                raise self._broken(_describe(err)) from err
            if event is None:
                raise self._broken("stream ended without GenerationFinished")
            if event.WhichOneof("event") is None:
                continue
            yield self.convert(event, model)
            if event.WhichOneof("event") == "finished":
                await _drain(events)
                return

    def _broken(self, why: str) -> StreamBroken:
        log.warning(
            "worker %s failed after %d token(s) of %s: %s",
            self._handle.name,
            self.usage.output_tokens,
            self._request_id,
            why,
        )
        return StreamBroken(
            f"worker {self._handle.name} failed after {self.usage.output_tokens} token(s) "
            f"were sent ({why}); not retried, to avoid duplicating text",
            usage=self.usage,
        )


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details() or 'no details'}"
    return str(err)
