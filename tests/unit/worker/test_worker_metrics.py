"""Prometheus metrics of the worker, scraped from a manager that loaded, failed and refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.errors import FailedPrecondition, ResourceExhausted
from modelyard.output_length import OutputEstimate
from modelyard.refs import model_key
from modelyard.v1 import common_pb2
from tests.fixtures.tiny_gguf import gguf_model
from worker.config import WorkerSettings
from worker.main import build_manager
from worker.metrics import metrics_registry
from worker.residency import ModelManager

MiB = 1 << 20


def scrape(
    manager: ModelManager, estimate: OutputEstimate | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics_registry(manager, estimate)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_memory_loads_durations_evictions_and_refusals_are_exported(
    settings: WorkerSettings, tiny_gguf: Path
) -> None:
    manager = build_manager(
        settings.model_copy(update={"memory_budget_bytes": 100 * MiB, "max_queued_requests": 1})
    )
    small, other, huge = (gguf_model(tiny_gguf, name=n) for n in ("small", "other", "huge"))
    small.resources.memory_bytes = other.resources.memory_bytes = 60 * MiB
    huge.resources.memory_bytes = 200 * MiB
    await manager.load(small)
    await manager.load(other)  # evicts small
    with pytest.raises(ResourceExhausted):
        await manager.load(huge)
    with pytest.raises(FailedPrecondition):
        async with manager.acquire(small):
            pass
    r = manager.get(model_key("other", "1"))
    assert r is not None
    r.queue.set_slots(0)  # nothing runs: the second request finds the queue full
    ticket = r.queue.submit(common_pb2.PRIORITY_NORMAL, 10)
    with pytest.raises(ResourceExhausted):
        r.queue.submit(common_pb2.PRIORITY_NORMAL, 10)
    r.queue.leave(ticket)

    m = scrape(manager)
    assert m["modelyard_worker_memory_budget_bytes", ()] == 100 * MiB
    assert m["modelyard_worker_memory_used_bytes", ()] == manager.used_bytes > 0
    assert m["modelyard_worker_model_loads_total", (("result", "loaded"),)] == 2
    assert m["modelyard_worker_model_loads_total", (("result", "failed"),)] == 1
    assert m["modelyard_worker_model_load_duration_seconds_count", ()] == 3
    assert m["modelyard_worker_model_load_duration_seconds_bucket", (("le", "+Inf"),)] == 3
    assert m["modelyard_worker_evictions_total", ()] == 1
    rejected = "modelyard_worker_rejected_requests_total"
    assert m[rejected, (("model", "small@1"), ("reason", "not_loaded"))] == 1
    assert m[rejected, (("model", "other@1"), ("reason", "queue_full"))] == 1
    assert m["modelyard_worker_queued_requests", (("model", "other@1"),)] == 0
    assert ("modelyard_worker_queued_tokens", (("model", "other@1"),)) in m
    # Throughput comes from rate() of the counter: no rate gauge beside it.
    assert ("modelyard_worker_generated_tokens_total", (("model", "other@1"),)) in m
    assert not [name for name, _ in m if name == "modelyard_worker_tokens_per_second"]
    await manager.close()


async def test_the_expected_output_of_unbounded_requests_is_exported(
    settings: WorkerSettings, tiny_gguf: Path
) -> None:
    """The running mean that plans requests without max_tokens, per loaded model."""
    manager = build_manager(settings.model_copy(update={"memory_budget_bytes": 100 * MiB}))
    model = gguf_model(tiny_gguf, name="small")
    model.resources.memory_bytes = 60 * MiB
    await manager.load(model)
    estimate = OutputEstimate(seed=100, weight=0.5)
    key = "modelyard_worker_expected_output_tokens", (("model", "small@1"),)
    text = generate_latest(metrics_registry(manager, estimate)).decode()
    assert f'{key[0]}{{model="small@1"}} 100.0' in text  # the seed, before any output
    estimate.observe(model_key("small", "1"), 300)
    assert scrape(manager, estimate)[key] == 200  # halfway to 300 at weight 0.5
    assert key not in scrape(manager)  # a registry without the estimate has none
    await manager.close()
