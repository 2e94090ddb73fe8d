"""Builders for scheduling-plugin tests: requests, models and candidates in one line."""

from __future__ import annotations

from typing import Any

from modelyard.v1 import model_pb2, worker_pb2
from router.scheduling.types import Candidate, CycleState, Request

WARM = worker_pb2.RESIDENCY_STATE_WARM
COLD = worker_pb2.RESIDENCY_STATE_COLD
LOADING = worker_pb2.RESIDENCY_STATE_LOADING


def req(**fields: Any) -> Request:
    base: dict[str, Any] = {"request_id": "r", "chat": False, "prompt_tokens": 10, "max_tokens": 10}
    base.update(fields)
    return Request(**base)


def model(
    name: str = "m",
    version: str = "1",
    *,
    price: float = 0.0,
    context_length: int = 2048,
    tags: tuple[str, ...] = (),
    chat: bool = True,
    completion: bool = True,
    memory_bytes: int = 0,
) -> model_pb2.Model:
    return model_pb2.Model(
        name=name,
        version=version,
        capabilities=model_pb2.Capabilities(
            chat=chat, completion=completion, context_length=context_length, tags=list(tags)
        ),
        pricing=model_pb2.Pricing(input_usd_per_1k_tokens=price, output_usd_per_1k_tokens=price),
        resources=model_pb2.Resources(memory_bytes=memory_bytes),
    )


def cand(worker: str = "w1", m: model_pb2.Model | None = None, **fields: Any) -> Candidate:
    return Candidate(worker=worker, worker_id=worker, model=m or model(), **fields)


def cycle() -> CycleState:
    return CycleState()
