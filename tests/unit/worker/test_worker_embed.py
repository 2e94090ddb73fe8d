"""WorkerService.Embed over a real grpc.aio server with the real all-MiniLM-L6-v2 on llama.cpp
(converted to GGUF by modelyard.bert_gguf), and the sim engine's hash vectors."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from modelyard.minilm import MINILM_DIMENSIONS, ensure_minilm, minilm_model
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.fixtures.tiny_gguf import gguf_model
from tests.worker_stub import serving
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."


# A short context keeps the over-long case cheap (a full 512-token pass is seconds here);
# 256 is the least llama.cpp opens (it pads n_ctx to 256).
CONTEXT = 256


@pytest.fixture(scope="module")
def minilm() -> model_pb2.Model:
    ensure_minilm()
    model = minilm_model()
    model.load_options.context_length = CONTEXT
    return model


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(
    settings: WorkerSettings, minilm: model_pb2.Model, tiny_gguf: Path
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    catalogue = FileCatalogue([minilm, gguf_model(tiny_gguf, name="tiny-chat")])
    async with serving(settings, catalogue) as client:
        yield client


def embed_request(
    model: model_pb2.Model, inputs: Sequence[str], **params: object
) -> worker_pb2.WorkerServiceEmbedRequest:
    return worker_pb2.WorkerServiceEmbedRequest(
        model=model_pb2.Model(name=model.name, version=model.version),
        inputs=list(inputs),
        params=common_pb2.EmbeddingParams(**params),  # type: ignore[arg-type]
        load_if_cold=True,
    )


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_embed_minilm_paraphrases_are_closer_and_vectors_are_unit(
    stub: worker_pb2_grpc.WorkerServiceStub, minilm: model_pb2.Model
) -> None:
    inputs = [*PARAPHRASES, UNRELATED]
    reply = await stub.Embed(embed_request(minilm, inputs), timeout=60)
    assert [e.index for e in reply.embeddings] == [0, 1, 2]
    vectors = [list(e.values) for e in reply.embeddings]
    assert all(len(v) == MINILM_DIMENSIONS for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    # [CLS] + 6 word pieces + "." + [SEP] = 8 tokens for the first; all counted.
    assert reply.usage.input_tokens > 8 * 2
    assert reply.usage.output_tokens == 0
    assert reply.started.engine == common_pb2.ENGINE_LLAMA_CPP
    # The same text alone gives the same vector: batching does not mix inputs.
    alone = await stub.Embed(embed_request(minilm, [UNRELATED]), timeout=60)
    assert cosine(alone.embeddings[0].values, vectors[2]) > 0.9999


async def test_embed_dimensions_normalize_and_pooling(
    stub: worker_pb2_grpc.WorkerServiceStub, minilm: model_pb2.Model
) -> None:
    raw = await stub.Embed(embed_request(minilm, [UNRELATED], normalize=False), timeout=60)
    norm = math.sqrt(sum(x * x for x in raw.embeddings[0].values))
    assert abs(norm - 1.0) > 0.01  # MiniLM's mean-pooled states are not unit length
    cut = await stub.Embed(embed_request(minilm, [UNRELATED], dimensions=64), timeout=60)
    values = list(cut.embeddings[0].values)
    assert len(values) == 64
    assert abs(math.sqrt(sum(x * x for x in values)) - 1.0) < 1e-4
    head = list(raw.embeddings[0].values)[:64]
    assert cosine(values, head) > 0.9999
    cls = await stub.Embed(
        embed_request(minilm, [UNRELATED], pooling=common_pb2.POOLING_CLS), timeout=60
    )
    assert cosine(cls.embeddings[0].values, raw.embeddings[0].values) < 0.99
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Embed(embed_request(minilm, [UNRELATED], dimensions=999), timeout=60)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "params.dimensions" in (bad.value.details() or "")


async def test_embed_over_long_input_names_its_index_unless_truncated(
    stub: worker_pb2_grpc.WorkerServiceStub, minilm: model_pb2.Model
) -> None:
    long_text = "word " * 300  # > CONTEXT tokens
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Embed(embed_request(minilm, [UNRELATED, long_text]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1]" in (err.value.details() or "")
    reply = await stub.Embed(
        embed_request(minilm, [UNRELATED, long_text], truncate=True), timeout=60
    )
    assert len(reply.embeddings) == 2
    assert len(reply.embeddings[1].values) == MINILM_DIMENSIONS
    assert reply.usage.input_tokens <= CONTEXT + 16


async def test_embed_refuses_a_chat_model_and_bad_batches(
    stub: worker_pb2_grpc.WorkerServiceStub, minilm: model_pb2.Model, tiny_gguf: Path
) -> None:
    chat = gguf_model(tiny_gguf, name="tiny-chat")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Embed(embed_request(chat, ["hello"]), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tiny-chat" in (err.value.details() or "")
    assert "not an embedding model" in (err.value.details() or "")
    for inputs, field in (([], "inputs"), (["ok", ""], "inputs[1]"), (["x" * 70000], "inputs[0]")):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Embed(embed_request(minilm, inputs), timeout=60)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (bad.value.details() or "")
