"""The worker's plan for a request without max_tokens: its bound and planned length."""

from __future__ import annotations

from modelyard.output_length import OutputEstimate
from modelyard.refs import ModelKey
from modelyard.v1 import common_pb2, worker_pb2
from worker.engines.base import EngineRequest, Finished, FinishReason
from worker.output_plan import OutputPlanner
from worker.service import engine_request, queued_tokens

KEY = ModelKey("m@1")


def generate(max_tokens: int = 0, ceiling: int = 0) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        prompt="x" * 40,  # about 10 tokens
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        max_output_tokens_ceiling=ceiling,
    )


def plan(planner: OutputPlanner, request: worker_pb2.WorkerServiceGenerateRequest) -> EngineRequest:
    return planner.plan(engine_request(request), request, KEY, context_length=2048)


def test_without_max_tokens_the_bound_is_the_context_and_the_plan_the_estimate() -> None:
    req = plan(OutputPlanner(estimate=OutputEstimate(seed=100)), generate())
    assert (req.max_tokens, req.expected_tokens, req.planned_tokens) == (2048, 100, 100)
    assert queued_tokens(generate(), req.planned_tokens) == 10 + 100  # not 10 + 2048


def test_the_lowest_of_the_routers_the_workers_and_the_context_bounds_it() -> None:
    planner = OutputPlanner(ceiling=500, estimate=OutputEstimate(seed=100))
    assert plan(planner, generate()).max_tokens == 500
    assert plan(planner, generate(ceiling=40)).max_tokens == 40
    assert plan(planner, generate(ceiling=40)).planned_tokens == 40  # capped by the bound
    assert plan(OutputPlanner(ceiling=9000), generate()).max_tokens == 2048


def test_a_set_max_tokens_is_kept_and_planned_in_full() -> None:
    planner = OutputPlanner(ceiling=10, estimate=OutputEstimate(seed=100))
    req = plan(planner, generate(max_tokens=300, ceiling=40))
    assert (req.max_tokens, req.expected_tokens, req.planned_tokens) == (300, 0, 300)


def test_finished_unbounded_outputs_correct_the_estimate_cancelled_ones_do_not() -> None:
    planner = OutputPlanner(estimate=OutputEstimate(seed=100, weight=0.5))
    planner.finished(generate(), KEY, Finished(FinishReason.CANCELLED, 10, 3))
    planner.finished(generate(max_tokens=8), KEY, Finished(FinishReason.LENGTH, 10, 8))
    assert planner.estimate.expected(KEY) == 100
    planner.finished(generate(), KEY, Finished(FinishReason.STOP, 10, 20))
    assert planner.estimate.expected(KEY) == 60
    assert plan(planner, generate()).expected_tokens == 60
