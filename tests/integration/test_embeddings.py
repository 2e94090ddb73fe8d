"""Embeddings end to end: the official `openai` SDK against a real mesh (registry, worker,
router as processes) serving two models, of which only all-MiniLM-L6-v2 embeds."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import openai
import pytest

from modelyard.client import Client
from modelyard.local_mesh import LocalMesh
from modelyard.minilm import MINILM_DIMENSIONS, MINILM_NAME, ensure_minilm, minilm_model
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import register

pytestmark = pytest.mark.integration

PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def embed_mesh(
    tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model
) -> Iterator[LocalMesh]:
    ensure_minilm()
    mesh = LocalMesh(
        data_dir=Path(tmp_path_factory.mktemp("embed-mesh")), worker_threads=2, router_http_port=0
    )
    mesh.start()
    try:
        register(mesh.registry_address, smollm2)
        register(mesh.registry_address, minilm_model())
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def client(embed_mesh: LocalMesh) -> openai.OpenAI:
    base = f"http://{embed_mesh.router_http_address}/v1"
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_sdk_embeddings_rank_paraphrases_keep_order_and_cut_dimensions(
    client: openai.OpenAI,
) -> None:
    inputs = [*PARAPHRASES, UNRELATED]
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    reply = client.embeddings.create(model=MINILM_NAME, input=inputs)
    vectors = [d.embedding for d in reply.data]
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(v) == MINILM_DIMENSIONS for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    assert reply.model.startswith(MINILM_NAME)
    # Reversed, as floats: each input keeps its own vector.
    floats = client.embeddings.create(
        model=MINILM_NAME, input=inputs[::-1], encoding_format="float"
    )
    for mine, theirs in zip(floats.data, vectors[::-1], strict=True):
        assert cosine(mine.embedding, theirs) > 0.9999
    cut = client.embeddings.create(model=MINILM_NAME, input=UNRELATED, dimensions=64)
    assert len(cut.data[0].embedding) == 64
    assert abs(math.sqrt(sum(x * x for x in cut.data[0].embedding)) - 1) < 1e-4


def test_sdk_refuses_what_it_cannot_embed(client: openai.OpenAI, smollm2: model_pb2.Model) -> None:
    with pytest.raises(openai.BadRequestError) as chat_model:
        client.embeddings.create(model=smollm2.name, input="hello")
    assert smollm2.name in str(chat_model.value)
    assert "not an embedding model" in str(chat_model.value)
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model=MINILM_NAME, input=[[101, 102]])
    assert "input" in str(tokens.value)
    with pytest.raises(openai.BadRequestError) as unknown:
        client.embeddings.create(model=MINILM_NAME, input="x", extra_body={"pooling": "cls"})
    assert "pooling" in str(unknown.value)


def test_generation_never_picks_the_embedding_model(
    embed_mesh: LocalMesh, client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    with grpc.insecure_channel(embed_mesh.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        auto = stub.Complete(
            router_pb2.CompleteRequest(
                prompt="Hello", sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0)
            ),
            timeout=120,
        )
        assert auto.started.model == smollm2.name
        embedded = stub.Embed(router_pb2.EmbedRequest(inputs=["auto picks"]), timeout=120)
        assert embedded.started.model == MINILM_NAME
        assert embedded.started.attempt == 1
    with Client(embed_mesh.router_address) as sdk:
        batch = sdk.embed([UNRELATED, PARAPHRASES[0]], model=MINILM_NAME, dimensions=8)
        assert [len(e.values) for e in batch.embeddings] == [8, 8]
    with pytest.raises(openai.BadRequestError) as named:
        client.chat.completions.create(
            model=MINILM_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert MINILM_NAME in str(named.value)
