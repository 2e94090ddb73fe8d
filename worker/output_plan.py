"""A request's output bound and planned length, for one that leaves max_tokens unset.

Such a request runs to the end of the model's context, or to the lowest ceiling that
applies: the router's (the route's and the API key's, sent in the request) and this
worker's setting. The queue budget, the queued-token figures and the engine's KV
reservation plan for the model's expected output instead (modelyard.output_length),
which each such request's final length then corrects.
"""

from __future__ import annotations

from dataclasses import replace

from modelyard.output_length import OutputEstimate, lowest_ceiling
from modelyard.refs import ModelKey
from modelyard.v1 import worker_pb2
from worker.engines.base import EngineRequest, Finished, FinishReason


class OutputPlanner:
    def __init__(self, *, ceiling: int = 0, estimate: OutputEstimate | None = None) -> None:
        self.ceiling = ceiling  # this worker's own; 0: none
        self.estimate = estimate if estimate is not None else OutputEstimate()

    def plan(
        self,
        req: EngineRequest,
        request: worker_pb2.WorkerServiceGenerateRequest,
        key: ModelKey,
        context_length: int,
    ) -> EngineRequest:
        """`req` with its bound and planned length; as it is when max_tokens was set.
        `context_length` is the one the model is (to be) loaded with."""
        if request.sampling.max_tokens:
            return replace(req, max_tokens=request.sampling.max_tokens, expected_tokens=0)
        bound = lowest_ceiling(request.max_output_tokens_ceiling, self.ceiling, context_length)
        return replace(req, max_tokens=bound, expected_tokens=self.estimate.expected(key, bound))

    def finished(
        self, request: worker_pb2.WorkerServiceGenerateRequest, key: ModelKey, event: Finished
    ) -> None:
        """Learn from an unbounded output that ended on its own (a cancelled one was cut
        short by its caller, and says nothing of the model's lengths)."""
        if not request.sampling.max_tokens and event.reason is not FinishReason.CANCELLED:
            self.estimate.observe(key, event.output_tokens)
