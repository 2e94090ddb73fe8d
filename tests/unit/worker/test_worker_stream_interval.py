"""stream_interval_ms on a real worker over gRPC (SmolLM2): the first token goes out
alone and at once, the rest at most once per interval, joined; the text and the usage
are the unpaced stream's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from modelyard.bundled import smollm2_model
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_events import content
from tests.worker_stub import serving
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings

INTERVAL_MS = 100.0
TOKENS = 64
COUNTING = "Count from 1 to 1000: 1, 2, 3, 4, 5,"


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path, settings: WorkerSettings) -> Any:
    """llama-cpp-python's own greedy text, streamed token by token."""
    from llama_cpp import Llama

    llama = Llama(
        str(smollm2_gguf), n_ctx=settings.context_length, n_threads=settings.threads, verbose=False
    )
    out: Any = llama.create_completion(COUNTING, max_tokens=TOKENS, temperature=0)
    llama.close()
    return out["choices"][0]["text"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(settings: WorkerSettings) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    model = smollm2_model()
    paced = settings.model_copy(update={"stream_interval_ms": INTERVAL_MS})
    async with serving(paced, FileCatalogue([model]), loaded=[model]) as client:
        yield client


def counting(model: model_pb2.Model) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt=COUNTING,
        sampling=common_pb2.SamplingParams(max_tokens=TOKENS, temperature=0.0),
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_tokens_after_the_first_go_out_joined_at_most_once_per_interval(
    stub: worker_pb2_grpc.WorkerServiceStub, reference: str
) -> None:
    call = stub.Generate(counting(smollm2_model()), timeout=60)
    events = []
    first_at = 0.0
    while (event := await call.read()) is not grpc.aio.EOF:
        if event.WhichOneof("event") == "delta" and not first_at:
            first_at = time.monotonic()
        events.append(event)
    elapsed = time.monotonic() - first_at
    events = content(events)
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    finished = events[-1].finished
    assert "".join(d.text for d in deltas) == reference
    assert sum(len(d.token_ids) for d in deltas) == finished.usage.output_tokens == TOKENS
    assert len(deltas[0].token_ids) == 1  # the first token is never held back
    # After the first, at most one delta per interval (and one that finds the end), the
    # tokens decoded meanwhile joined: unpaced, one delta per token (64).
    assert len(deltas) <= 3 + elapsed * 1000.0 / INTERVAL_MS
    assert max(len(d.token_ids) for d in deltas) > 1


def test_the_interval_is_off_by_default_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().stream_interval_ms == 0
    monkeypatch.setenv("MODELYARD_WORKER_STREAM_INTERVAL_MS", "25")
    assert WorkerSettings().stream_interval_ms == 25
    monkeypatch.setenv("MODELYARD_WORKER_STREAM_INTERVAL_MS", "5000")
    with pytest.raises(ValueError, match="stream_interval_ms"):
        WorkerSettings()
