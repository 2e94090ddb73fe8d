"""The transformers engine embeds a sentence-transformers checkpoint (the real
all-MiniLM-L6-v2) with its own pooling; runs in .venv-vllm (scripts/test.sh VLLM_TESTS)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from modelyard.errors import FailedPrecondition
from modelyard.minilm import MINILM_DIMENSIONS, minilm_checkpoint
from worker.engines.base import EmbedRequest, EngineRequest, ModelSpec, Pooling
from worker.engines.transformers import TransformersEngine

pytestmark = pytest.mark.asyncio


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_transformers_embeds_minilm_paraphrases_closer() -> None:
    engine = TransformersEngine()
    spec = ModelSpec("minilm@hf", minilm_checkpoint(), 512, 1, embedding=True)
    info = await engine.load(spec)
    try:
        assert info.context_length == 512
        inputs = (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply today.",
        )
        result = await engine.embed(EmbedRequest(inputs))
        a, b, c = result.vectors
        assert len(a) == MINILM_DIMENSIONS
        assert cosine(a, b) > cosine(a, c) + 0.3
        # sentence-transformers' reference for the first input begins 0.0332, 0.0044, -0.0063
        unit = [x / math.sqrt(sum(y * y for y in a)) for x in a]
        assert [round(x, 3) for x in unit[:3]] == [0.033, 0.004, -0.006]
        assert result.input_tokens > 16  # every input, [CLS] and [SEP] included
        cls = await engine.embed(EmbedRequest(inputs[:1], pooling=Pooling.CLS))
        assert cosine(cls.vectors[0], a) < 0.99
        with pytest.raises(FailedPrecondition):
            async for _ in engine.generate(EngineRequest("x", prompt="hi")):
                pass
    finally:
        await engine.unload()
