"""The Relay: one generation from request to finish, across candidates and fallbacks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing

import grpc
from opentelemetry import trace

from modelyard.auth import current_caller
from modelyard.errors import ModelyardError, Unavailable
from modelyard.genai import operation_name, response_attributes, usage_attributes
from modelyard.output_length import lowest_ceiling
from modelyard.refs import key_of
from modelyard.v1 import common_pb2, model_pb2, router_pb2
from router.accounting import Accounting
from router.admission import RouterAdmission
from router.cache import CacheHook, ResponseCache
from router.catalog import Catalog
from router.client_policy import ClientPolicy
from router.relay.attempts import (
    Attempt,
    Committed,
    Fatal,
    Outcome,
    Retryable,
    Scheduled,
    attempts,
)
from router.relay.calls import OpenCall, Prefill, route_span
from router.relay.candidate_pool import IndexedPool
from router.relay.refusals import left_pool, refused
from router.relay.requests import (
    Intake,
    check_context,
    intake,
    scheduling_request,
    worker_request,
)
from router.relay.run import GenerationRun
from router.relay.silence import SilenceWatch, Silent
from router.relay.stream import (
    NoFinish,
    StreamBroken,
    StreamRelay,
    StreamSilent,
    read_head,
)
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.predict import uncached_prompt_tokens
from router.scheduling.types import Request
from router.state.local_load import LocalLoad
from router.state.prefix_history import PrefixHistory
from router.stats import Outcome as StatsOutcome
from router.worker_rpc import end_call, start_call
from router.workers import WorkerPool

log = logging.getLogger(__name__)


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
        silence_timeout_s: float = 2.0,
        stream_silence_timeout_s: float = 10.0,
        client_policy: ClientPolicy | None = None,
        admission: RouterAdmission | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix_history: PrefixHistory | None = None,
        response_cache: ResponseCache | None = None,
    ) -> None:
        self._catalog = catalog
        self._client_policy = client_policy or ClientPolicy()
        self.admission = admission or RouterAdmission(max_in_flight=1024)
        self._pool = pool
        self._profiles = profiles
        self._acct = accounting
        self._max_attempts = max_attempts
        self._max_total_attempts = max(max_total_attempts, max_attempts)
        self._connect_timeout_s = connect_timeout_s
        self._silence_s = (silence_timeout_s, stream_silence_timeout_s)
        self._clock = clock
        self.load = LocalLoad(history=prefix_history or PrefixHistory())
        self._cache = CacheHook(response_cache, accounting, clock)

    def candidates(self, models: Sequence[model_pb2.Model]) -> IndexedPool:
        """The request's candidates, built as the scheduling cycle asks for them."""
        return IndexedPool(models, self._pool, self._acct, self.load)

    async def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """Stream the generation; `timeout_s` is what is left of the caller's deadline."""
        accepted = self.intake(request)
        request_id, key = accepted.request_id, accepted.key
        started_at = self._clock()
        deadline = None if timeout_s is None else started_at + timeout_s
        with self.admission.admit(key), route_span(request, request_id) as span:
            async with AsyncExitStack() as cleanup:
                # Current only while the relay resolves and connects (the worker call
                # joins this trace), never across a yield: a front may resume this
                # generator from another task.
                with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                    run = await self.prepare(request, request_id, started_at, deadline, span)
                    look = await self._cache.lookup(
                        request,
                        request_id,
                        run.target,
                        run.client,
                        span,
                        self._left(deadline),
                        output_ceiling=run.output_ceiling,
                    )
                    cleanup.callback(self._cache.release, look)
                    leg = None if look.hit else await self._commit(run, cleanup)
                if leg is None:  # answered from the response cache: no worker call
                    hit = self._cache.replay(
                        look,
                        request_id=request_id,
                        target=run.target,
                        client=run.client,
                        started_at=started_at,
                    )
                    async for event in hit:
                        yield event
                    return
                stream = self._first_token(run, leg, span)
                events = await cleanup.enter_async_context(
                    aclosing(stream.relay(leg.head, leg.events, leg.watch))
                )
                try:
                    async for event in events:
                        look.see(event)
                        yield event
                except ModelyardError as err:
                    leg.call.close(err.code)
                    self._broken(run, leg, stream, err)
                    raise
                leg.call.close(grpc.StatusCode.OK)
                span.set_attributes(usage_attributes(stream.finished.usage))
                self._finished(run, leg, stream)
                await self._cache.store(look, leg.attempt.cand.model)

    def intake(self, request: router_pb2.GenerateRequest) -> Intake:
        """The request's id and admission key, once it is fit to work on; else raises."""
        return intake(request, self._client_policy)

    async def prepare(
        self,
        request: router_pb2.GenerateRequest,
        request_id: str,
        started_at: float,
        deadline: float | None,
        span: trace.Span,
    ) -> GenerationRun:
        """Resolve the model field and check that there is a worker to try."""
        target = await self._catalog.target(
            request.model,
            chat=bool(request.messages),
            hints=request.hints,
            timeout_s=self._left(deadline),
        )
        if len(target.models) == 1:
            span.set_attribute("modelyard.model", key_of(target.models[0]))
        if target.route:
            span.set_attribute("modelyard.route", target.route)
            span.set_attribute("modelyard.arm", target.arm)
        req = scheduling_request(request, request_id, target)
        check_context(req, target)
        caller = current_caller()
        client = caller.key_name or caller.identity if caller is not None else ""
        if client:
            span.set_attribute("modelyard.client", client)
        ceiling = lowest_ceiling(
            target.max_output_tokens_ceiling, self._client_policy.output_ceiling(caller)
        )
        return GenerationRun(
            request,
            request_id,
            target,
            req,
            started_at,
            deadline,
            client=client,
            output_ceiling=ceiling,
        )

    async def _commit(self, run: GenerationRun, cleanup: AsyncExitStack) -> Committed:
        """Try candidates in order until one sends its first token; else the final error."""
        for attempt in self.plan(run):
            if attempt.number > 1:
                self._acct.retried()
            outcome = await self.try_candidate(run, attempt, cleanup)
            if isinstance(outcome, Committed):
                return outcome
            if isinstance(outcome, Fatal):
                self._failed(run, attempt.cand.model, outcome.error.code.name)
                raise outcome.error
            run.log.retryable(outcome)
            if outcome.worker_failed:
                self._acct.attempt_failed(attempt.cand.worker)
            if outcome.silent:  # frozen, not failing: out of scheduling at once
                self._acct.breakers.eject(attempt.cand.worker)
        raise self.exhausted(run)

    def plan(self, run: GenerationRun) -> Iterator[Attempt]:
        """The candidates to try, best first: the target's models, then its fallbacks."""
        if not self._pool.workers:  # checked here, not before: a cached answer needs none
            # Counted like any failed request: with every pool scaled to zero, these are
            # what an autoscaler's wake query sees.
            target = run.target
            self._failed(run, target.models[0] if len(target.models) == 1 else None, "UNAVAILABLE")
            raise Unavailable(
                "the router has no workers; start it with --worker host:port",
                reason="NO_WORKERS",
            )
        profile = self._profiles[run.req.objective]
        groups = (self._schedule(profile, run.req, models) for models in run.target.groups)
        budget = {"per_model": self._max_attempts, "total": self._max_total_attempts}
        return attempts(groups, run.log, **budget)

    def exhausted(self, run: GenerationRun) -> ModelyardError:
        """Every candidate was tried (or none fit): the error to answer with, counted."""
        target = run.target
        # A connect wait cut short by the caller's deadline is a deadline, not an outage.
        self._check_deadline(run)
        error = run.log.final_error(target, [h.address for h in self._pool.workers])
        self._failed(run, target.models[0] if len(target.models) == 1 else None, error.code.name)
        return error

    def _schedule(
        self, profile: Profile, req: Request, models: Sequence[model_pb2.Model]
    ) -> Scheduled:
        pool = self.candidates(models)
        decision = run_cycle(profile, req, pool)
        return Scheduled(decision.ordered, decision.cycle, pool.handles)

    async def try_candidate(
        self, run: GenerationRun, attempt: Attempt, cleanup: AsyncExitStack
    ) -> Outcome:
        """Open the call to one candidate and read up to its first token. A committed
        call stays open (closed by `cleanup`); any other is closed before returning."""
        handle = attempt.handle
        left = self._check_deadline(run)
        connect_s = min(self._connect_timeout_s, math.inf if left is None else left)
        try:
            await handle.connect(connect_s)
        except TimeoutError:
            log.warning("worker %s not reachable for %s", handle.address, run.request_id)
            return Retryable(f"{handle.address} (not reachable within {connect_s:.1f}s)")
        except grpc.aio.UsageError:
            return left_pool(handle)
        self._acct.breakers.on_attempt(handle.address)
        route_ms = (self._clock() - run.started_at) * 1000
        opened_at = self._clock()
        span, metadata = start_call("Generate", handle.address, handle.auth)
        try:
            call = OpenCall(
                handle.stub.Generate(
                    worker_request(run.request, run.assignment(attempt)),
                    timeout=self._left(run.deadline),
                    metadata=metadata,
                    wait_for_ready=False,
                ),
                handle.address,
                self.load.in_flight,
                Prefill(self.load.prefilling, uncached_prompt_tokens(run.req, attempt.cand)),
                span,
            )
        except grpc.aio.UsageError:
            end_call(span, grpc.StatusCode.CANCELLED)
            return left_pool(handle)
        cleanup.callback(call.close)
        events = aiter(call.call)
        watch = SilenceWatch.for_status(handle.status, self._silence_s, run.deadline, self._clock)
        try:
            head = await read_head(events, watch)
        except grpc.aio.AioRpcError as err:
            call.close(err.code())
            return refused(run.request_id, handle, err)
        except NoFinish as err:
            call.close(grpc.StatusCode.UNKNOWN)
            return refused(run.request_id, handle, err)
        except grpc.aio.UsageError:
            call.close()
            return left_pool(handle)
        except Silent as err:
            call.close()
            log.warning(
                "worker %s %s before the first token of %s: ejected",
                handle.name,
                err,
                run.request_id,
            )
            return Retryable(f"{handle.address} ({err} before the first token)", silent=True)
        call.prefilled()
        return Committed(attempt, head, events, opened_at, route_ms, watch, call)

    def _first_token(self, run: GenerationRun, leg: Committed, span: trace.Span) -> StreamRelay:
        cand, handle = leg.attempt.cand, leg.attempt.handle
        now = self._clock()
        self._acct.first_token(
            cand.worker,
            cand.model_key,
            ewma_ms=(now - leg.opened_at) * 1000,
            client_ms=(now - run.started_at) * 1000,
        )
        if not cand.prefix_precise:
            self.load.history.record(cand.model_key, cand.worker, run.req.prefix)
        span.set_attribute("modelyard.worker", handle.worker_id or handle.address)
        span.set_attribute("modelyard.model", cand.model_key)
        span.set_attribute("modelyard.attempt", leg.attempt.number)
        span.set_attributes(response_attributes(cand.model_key, run.request_id))
        run.first_token_at = now
        return StreamRelay(
            run.assignment(leg.attempt),
            worker_id=handle.worker_id or handle.address,
            worker_name=handle.name,
            route_ms=leg.route_ms,
        )

    def _finished(self, run: GenerationRun, leg: Committed, stream: StreamRelay) -> None:
        done = stream.finished
        model = leg.attempt.cand.model
        self._acct.finished(
            run.request_id,
            leg.attempt.cand.worker,
            StatsOutcome(
                model=model.name,
                version=model.version,
                route=run.target.route,
                arm=run.target.arm,
                usage=done.usage,
                cost_usd=done.cost.total_usd,
                ttft_ms=(run.first_token_at - run.started_at) * 1000,
                total_ms=(self._clock() - run.started_at) * 1000,
                client=run.client,
                attempt=leg.attempt.number,
            ),
            done,
            operation=operation_name(bool(run.request.messages)),
        )

    def _broken(
        self, run: GenerationRun, leg: Committed, stream: StreamRelay, err: ModelyardError
    ) -> None:
        """A stream that failed after its first event: the worker's health, the outcome."""
        worker = leg.attempt.cand.worker
        if isinstance(err, StreamBroken):
            self._acct.attempt_failed(worker)
        if isinstance(err, StreamSilent):
            self._acct.breakers.eject(worker)
        self._failed(run, leg.attempt.cand.model, err.code.name, stream.usage)

    def _failed(
        self,
        run: GenerationRun,
        model: model_pb2.Model | None,
        code: str,
        usage: common_pb2.Usage | None = None,
    ) -> None:
        target = run.target
        self._acct.failed(
            run.request_id,
            StatsOutcome(
                model=model.name if model is not None else target.name,
                version=model.version if model is not None else "",
                route=target.route,
                arm=target.arm,
                ok=False,
                usage=usage,
                client=run.client,
            ),
            code,
        )

    def _check_deadline(self, run: GenerationRun) -> float | None:
        """The seconds left, or DEADLINE_EXCEEDED once there are none."""
        left = self._left(run.deadline)
        if left is not None and left <= 0:
            raise run.log.deadline_error(run.target)
        return left

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()
