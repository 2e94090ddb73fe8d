"""Embed through the mesh: resolved, scheduled, retried and accounted like a generation.

It shares the generation's parts rather than its loop: the catalogue's resolution (a
model, a route's arm and fallbacks, or "auto" among embedding models), the scheduler's
filters (capability keeps only embedding models) and picker, the attempt budget, the
breakers, per-key admission and the client policy. An embedding is one unary answer,
so "before the first token" is simply "before the answer": any UNAVAILABLE or full
worker moves on to the next candidate, anything else is the answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from modelyard.auth import current_caller
from modelyard.errors import FailedPrecondition, Unavailable
from modelyard.genai import request_attributes, response_attributes, span_name, usage_attributes
from modelyard.pricing import cost_of
from modelyard.refs import key_of
from modelyard.tokens import estimate_tokens
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2
from modelyard.validation import check_embed
from router.accounting import Accounting
from router.admission import RouterAdmission
from router.catalog import Catalog, Target
from router.client_policy import ClientPolicy
from router.relay.attempts import Attempt, AttemptLog, Fatal, Retryable, Scheduled, attempts
from router.relay.candidate_pool import IndexedPool
from router.relay.refusals import left_pool, refused
from router.relay.requests import hinted, request_id_of
from router.scheduling.framework import Profile, run_cycle
from router.scheduling.types import Request
from router.state.local_load import LocalLoad
from router.stats import Outcome
from router.worker_rpc import end_call, start_call
from router.workers import WorkerPool

tracer = trace.get_tracer("modelyard.router")

EMBEDDINGS = "embeddings"  # gen_ai.operation.name


@dataclass
class _Run:
    request: router_pb2.EmbedRequest
    request_id: str
    target: Target
    req: Request
    started_at: float
    deadline: float | None
    client: str
    log: AttemptLog


class EmbedRelay:
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
        client_policy: ClientPolicy | None = None,
        admission: RouterAdmission | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._profiles = profiles
        self._acct = accounting
        self._budget = {"per_model": max_attempts, "total": max(max_total_attempts, max_attempts)}
        self._connect_timeout_s = connect_timeout_s
        self._client_policy = client_policy or ClientPolicy()
        self._admission = admission or RouterAdmission(max_in_flight=1024)
        self._clock = clock
        # This relay's open calls per worker: the pushed status lags behind them.
        # Its history and prefill tally stay empty: an embedding leaves no prefix in a KV
        # cache and is not the prefill the scorers weigh.
        self._load = LocalLoad()

    async def embed(
        self, request: router_pb2.EmbedRequest, *, timeout_s: float | None
    ) -> router_pb2.EmbedResponse:
        check_embed(request.inputs, request.params)
        caller = current_caller()
        policy_view = router_pb2.GenerateRequest(hints=request.hints, priority=request.priority)
        self._client_policy.check(policy_view, caller)
        request_id = request_id_of(request.request_id)
        started_at = self._clock()
        deadline = None if timeout_s is None else started_at + timeout_s
        client = (caller.key_name or caller.identity) if caller is not None else ""
        with (
            self._admission.admit(caller.key_name if caller is not None else ""),
            tracer.start_as_current_span(
                span_name(EMBEDDINGS, request.model or "auto"),
                attributes={
                    **request_attributes(EMBEDDINGS, request.model or "auto"),
                    "modelyard.request_id": request_id,
                },
            ) as span,
        ):
            target = await self._catalog.target(
                request.model,
                chat=False,
                embedding=True,
                hints=request.hints,
                timeout_s=None if deadline is None else deadline - self._clock(),
            )
            _check_embedding_models(target)
            run = _Run(
                request,
                request_id,
                target,
                _scheduling_request(request, request_id, target),
                started_at,
                deadline,
                client,
                AttemptLog(),
            )
            response = await self._commit(run, span)
            span.set_attributes(usage_attributes(response.usage))
            return response

    async def _commit(self, run: _Run, span: trace.Span) -> router_pb2.EmbedResponse:
        if not self._pool.workers:
            self._failed(run, None, "UNAVAILABLE")
            raise Unavailable(
                "the router has no workers; start it with --worker host:port",
                reason="NO_WORKERS",
            )
        profile = self._profiles[run.req.objective]
        groups = (self._schedule(profile, run.req, models) for models in run.target.groups)
        for attempt in attempts(groups, run.log, **self._budget):
            if attempt.number > 1:
                self._acct.retried()
            outcome = await self._try(run, attempt)
            if isinstance(outcome, router_pb2.EmbedResponse):
                span.set_attributes(response_attributes(key_of(attempt.cand.model), run.request_id))
                span.set_attribute(
                    "modelyard.worker", attempt.handle.worker_id or attempt.handle.address
                )
                return outcome
            if isinstance(outcome, Fatal):
                self._failed(run, attempt.cand.model, outcome.error.code.name)
                raise outcome.error
            run.log.retryable(outcome)
            if outcome.worker_failed:
                self._acct.attempt_failed(attempt.cand.worker)
        left = self._left(run.deadline)
        if left is not None and left <= 0:
            raise run.log.deadline_error(run.target)
        error = run.log.final_error(run.target, [h.address for h in self._pool.workers])
        self._failed(run, None, error.code.name)
        raise error

    def _schedule(
        self, profile: Profile, req: Request, models: Sequence[model_pb2.Model]
    ) -> Scheduled:
        pool = IndexedPool(models, self._pool, self._acct, self._load)
        decision = run_cycle(profile, req, pool)
        return Scheduled(decision.ordered, decision.cycle, pool.handles)

    async def _try(
        self, run: _Run, attempt: Attempt
    ) -> router_pb2.EmbedResponse | Retryable | Fatal:
        handle = attempt.handle
        left = self._left(run.deadline)
        if left is not None and left <= 0:
            raise run.log.deadline_error(run.target)
        try:
            await handle.connect(min(self._connect_timeout_s, math.inf if left is None else left))
        except TimeoutError:
            return Retryable(f"{handle.address} (not reachable)")
        except grpc.aio.UsageError:
            return left_pool(handle)
        self._acct.breakers.on_attempt(handle.address)
        target = run.target
        self._load.in_flight[handle.address] += 1
        span, metadata = start_call("Embed", handle.address, handle.auth)
        code = grpc.StatusCode.CANCELLED  # until the call says otherwise
        try:
            reply = await handle.stub.Embed(
                worker_pb2.WorkerServiceEmbedRequest(
                    request_id=run.request_id,
                    model=attempt.cand.model,
                    inputs=run.request.inputs,
                    params=run.request.params,
                    priority=run.request.priority,
                    load_if_cold=True,
                    route=target.route,
                    arm=target.arm,
                    attempt=attempt.number,
                ),
                timeout=self._left(run.deadline),
                metadata=metadata,
            )
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
            return refused(run.request_id, handle, err)
        except grpc.aio.UsageError:
            return left_pool(handle)
        finally:
            self._load.in_flight[handle.address] -= 1
            end_call(span, code)
        return self._answer(run, attempt, reply)

    def _answer(
        self, run: _Run, attempt: Attempt, reply: worker_pb2.WorkerServiceEmbedResponse
    ) -> router_pb2.EmbedResponse:
        model, handle = attempt.cand.model, attempt.handle
        started = common_pb2.GenerationStarted()
        started.CopyFrom(reply.started)
        started.request_id, started.attempt = run.request_id, attempt.number
        started.route, started.arm = run.target.route, run.target.arm
        started.worker_id = handle.worker_id or handle.address
        usage = common_pb2.Usage(input_tokens=reply.usage.input_tokens)
        cost = cost_of(model.pricing, usage)  # the registry's prices, as for a generation
        total_ms = (self._clock() - run.started_at) * 1000
        timings = common_pb2.Timings()
        timings.CopyFrom(reply.timings)
        timings.total_ms = total_ms
        finished = common_pb2.GenerationFinished(usage=usage, timings=timings, cost=cost)
        self._acct.finished(
            run.request_id,
            attempt.cand.worker,
            Outcome(
                model=model.name,
                version=model.version,
                route=run.target.route,
                arm=run.target.arm,
                usage=usage,
                cost_usd=cost.total_usd,
                ttft_ms=None,  # no tokens stream: TTFT histograms stay generations'
                total_ms=total_ms,
                client=run.client,
                attempt=attempt.number,
            ),
            finished,
            operation=EMBEDDINGS,
        )
        return router_pb2.EmbedResponse(
            started=started, embeddings=reply.embeddings, usage=usage, timings=timings, cost=cost
        )

    def _failed(self, run: _Run, model: model_pb2.Model | None, code: str) -> None:
        target = run.target
        self._acct.failed(
            run.request_id,
            Outcome(
                model=model.name if model is not None else target.name,
                version=model.version if model is not None else "",
                route=target.route,
                arm=target.arm,
                ok=False,
                client=run.client,
            ),
            code,
        )

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else deadline - self._clock()


def _check_embedding_models(target: Target) -> None:
    """FAILED_PRECONDITION naming the model when what the caller named cannot embed."""
    models = [m for group in target.groups for m in group]
    if models and not any(m.capabilities.embedding for m in models):
        name = target.name
        raise FailedPrecondition(
            f"model {name} is not an embedding model (its capabilities do not include "
            "embedding); name an embedding model, or leave model empty for any",
            reason="NOT_AN_EMBEDDING_MODEL",
            metadata={"model": name},
        )


def _scheduling_request(
    request: router_pb2.EmbedRequest, request_id: str, target: Target
) -> Request:
    longest = 0 if request.params.truncate else max(len(t) for t in request.inputs)
    return Request(
        request_id=request_id,
        chat=False,
        embedding=True,
        prompt_tokens=estimate_tokens(longest),
        max_tokens=0,
        **hinted(request.hints, target),
    )
