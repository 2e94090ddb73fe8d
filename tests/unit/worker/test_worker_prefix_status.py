"""A worker publishes its models' prefix caches: WatchStatus, Usage and Prometheus.

A real worker over gRPC serving a simulated model (its prefix cache is the llama.cpp
engine's at the level of the mesh's hashing scheme): a chat turn's chains show up in
the status watch, the next turn reports cached tokens, and the totals are metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from modelyard.prefix import SCHEME, chain_of_messages
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.sim_models import sim_model
from tests.unit.worker.test_worker_metrics import scrape
from tests.worker_events import collect
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue.file import FileCatalogue
from worker.config import WorkerSettings
from worker.engines.prefix_summary import MAX_SUMMARY_LINKS
from worker.main import RunningWorker, start_worker

EXTRA = {"sim_decode_ms_per_token": "1", "sim_eos_probability": "0"}
HISTORY = " ".join(f"fact {i} is known." for i in range(120))
WATCH_DEADLINE_S = 30


@pytest_asyncio.fixture
async def worker(tmp_path: Path) -> AsyncIterator[RunningWorker]:
    artifact = tmp_path / "sim.bin"
    artifact.write_bytes(b"a simulated model\n")
    model = sim_model(artifact, "sim-a", extra=EXTRA, context_length=4096)
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        sim_engine=True,
        context_length=4096,
        prefix_cache_share=0.5,
        artifacts=ArtifactSettings(cache_dir=tmp_path / "cache"),
    )
    running = await start_worker(settings, catalogue=FileCatalogue([model]))
    try:
        yield running
    finally:
        await running.stop(grace_s=1)


def chat(
    model: model_pb2.Model, turns: list[common_pb2.ChatMessage], max_tokens: int = 6
) -> worker_pb2.WorkerServiceGenerateRequest:
    request = worker_pb2.WorkerServiceGenerateRequest(model=model, messages=turns)
    request.load_if_cold = True
    request.sampling.temperature, request.sampling.max_tokens = 0.0, max_tokens
    return request


async def generate(
    stub: worker_pb2_grpc.WorkerServiceStub, request: worker_pb2.WorkerServiceGenerateRequest
) -> tuple[str, common_pb2.Usage]:
    events = await collect(stub.Generate(request, timeout=30))
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    return text, events[-1].finished.usage


async def watch_until_held(
    stub: worker_pb2_grpc.WorkerServiceStub, link: int
) -> worker_pb2.PrefixCacheSummary:
    """The first watched status whose model's summary holds `link` (a deadline, no sleeps)."""
    call = stub.WatchStatus(worker_pb2.WatchStatusRequest(), timeout=WATCH_DEADLINE_S)
    try:
        async for update in call:
            for m in update.status.models:
                if link in m.prefix_cache.link_hashes:
                    summary: worker_pb2.PrefixCacheSummary = m.prefix_cache
                    return summary
    finally:
        call.cancel()
    raise AssertionError("the watch ended before the summary held the link")


async def test_a_chat_turns_chains_are_watched_and_the_next_turn_is_cached(
    worker: RunningWorker,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        model = model_pb2.Model(name="sim-a", version="1")
        turn1 = [
            common_pb2.ChatMessage(role="system", content=HISTORY),
            common_pb2.ChatMessage(role="user", content="What is fact 7?"),
        ]
        reply, usage1 = await generate(stub, chat(model, turn1))
        assert usage1.cached_input_tokens == 0
        with_reply = [*turn1, common_pb2.ChatMessage(role="assistant", content=reply)]
        summary = await watch_until_held(stub, chain_of_messages(with_reply).hashes[-1])
        assert summary.scheme == SCHEME
        assert set(chain_of_messages(turn1).hashes) <= set(summary.link_hashes)
        assert 0 < summary.cached_tokens <= summary.cached_tokens_limit == 2048
        assert len(summary.link_hashes) <= MAX_SUMMARY_LINKS

        turn2 = [*with_reply, common_pb2.ChatMessage(role="user", content="And fact 8?")]
        _, usage2 = await generate(stub, chat(model, turn2))
        assert usage1.input_tokens < usage2.cached_input_tokens < usage2.input_tokens

        status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
        (m,) = status.models
        assert m.prefix_cache.cached_prompt_tokens_total >= usage2.cached_input_tokens
        assert m.prefix_cache.prompt_tokens_total >= usage1.input_tokens + usage2.input_tokens
        metrics = scrape(worker.manager)
        label = (("model", "sim-a@1"),)
        assert metrics["modelyard_worker_prompt_tokens_total", label] == (
            m.prefix_cache.prompt_tokens_total
        )
        assert metrics["modelyard_worker_cached_prompt_tokens_total", label] == (
            m.prefix_cache.cached_prompt_tokens_total
        )
