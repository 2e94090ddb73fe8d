"""vLLM-CPU engine on the real SmolLM2 (converted from its GGUF once, then cached).

One AsyncLLM for the whole module (~25-60 s to start, ~3.5 GB), driven from one
module-scoped event loop, as the engine requires. Runs under .venv-vllm:
    .venv-vllm/bin/pytest tests/integration/test_vllm_engine.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from modelyard.bundled import smollm2_path
from modelyard.errors import InvalidArgument
from worker.engines.base import (
    ChatTurn,
    EngineRequest,
    Finished,
    FinishReason,
    ModelSpec,
    OutputFormat,
    Piece,
    SamplingConfig,
    Scheduled,
)

pytest.importorskip("vllm")
psutil = pytest.importorskip("psutil")

from worker.engines.vllm import VllmEngine  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

GREEDY = SamplingConfig(temperature=0.0)


def _engine_processes() -> list[str]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "VLLM" in child.name():
                alive.append(child.name())
        except psutil.NoSuchProcess:
            pass
    return alive


async def _wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05)):
        if done() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[VllmEngine]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    eng = VllmEngine()
    await eng.load(
        ModelSpec(
            key="smollm2@test",
            path=smollm2_path(),
            context_length=2048,
            threads=1,
            prefix_cache_share=0.5,  # automatic prefix caching on (opt-in)
        )
    )
    try:
        yield eng
    finally:
        await eng.unload()
        await _wait_until(lambda: not _engine_processes(), 15.0)
        assert _engine_processes() == [], "vLLM engine-core processes outlived unload"


async def _collect(eng: VllmEngine, req: EngineRequest) -> tuple[str, list[int], Finished, int]:
    text, tokens, scheduled = "", list[int](), -1
    async for event in eng.generate(req):
        if isinstance(event, Scheduled):
            scheduled = event.input_tokens
        elif isinstance(event, Piece):
            text += event.text
            tokens.extend(event.token_ids)
        else:
            return text, tokens, event, scheduled
    raise AssertionError("the stream ended without Finished")


async def test_streamed_greedy_output_is_deterministic_and_matches_transformers(
    engine: VllmEngine,
) -> None:
    req = EngineRequest("greedy", prompt="The capital of France is", sampling=GREEDY, max_tokens=12)
    text, tokens, fin, n_in = await _collect(engine, req)
    again, tokens2, _, _ = await _collect(engine, dataclasses.replace(req, request_id="greedy2"))
    assert (text, tokens) == (again, tokens2)
    assert fin.output_tokens == len(tokens) and fin.input_tokens == n_in > 0
    assert "Paris" in text

    # The same bf16 checkpoint, greedy in transformers: the same first dozen tokens.
    import torch
    from transformers import AutoModelForCausalLM

    from worker.engines.hf_convert import hf_checkpoint

    ckpt = await hf_checkpoint(smollm2_path())
    model: Any = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    assert engine._prompter is not None
    ids = engine._prompter.token_ids(req)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert out[0, len(ids) :].tolist()[:12] == tokens[:12]


async def test_chat_uses_the_tokenizer_template(engine: VllmEngine) -> None:
    req = EngineRequest(
        "chat",
        messages=[ChatTurn("user", "What is the capital of France? One word.")],
        sampling=GREEDY,
        max_tokens=16,
    )
    text, _, fin, _ = await _collect(engine, req)
    assert "Paris" in text and fin.reason in {FinishReason.STOP, FinishReason.LENGTH}


async def test_eight_concurrent_streams_complete_with_exact_usage(engine: VllmEngine) -> None:
    reqs = [
        EngineRequest(
            f"c{i}", prompt=f"Once upon a time, story {i}:", sampling=GREEDY, max_tokens=32
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*(_collect(engine, r) for r in reqs))
    for (_, tokens, fin, n_in), req in zip(results, reqs, strict=True):
        assert fin.output_tokens == len(tokens) <= req.max_tokens
        assert fin.reason is FinishReason.LENGTH or fin.output_tokens < req.max_tokens
        assert fin.input_tokens == n_in == len(engine._prompter.token_ids(req))  # type: ignore[union-attr]
    assert engine.stats().running_sequences == 0


async def test_stop_sequence_ends_the_stream_without_the_stop_text(engine: VllmEngine) -> None:
    base = EngineRequest("s0", prompt="Count: 1, 2, 3, 4, 5,", sampling=GREEDY, max_tokens=24)
    full, _, _, _ = await _collect(engine, base)
    stop = full.strip().split(",")[1].strip() if "," in full else full.strip()[:2]
    req = EngineRequest("s1", prompt=base.prompt, sampling=GREEDY, max_tokens=24, stop=[stop])
    text, _, fin, _ = await _collect(engine, req)
    assert fin.reason is FinishReason.STOP_SEQUENCE and fin.stop_sequence == stop
    assert stop not in text and full.startswith(text)


async def test_abort_cancels_the_request_inside_vllm(engine: VllmEngine) -> None:
    req = EngineRequest("long", prompt="Write a long essay about the sea.", max_tokens=1500)
    pieces = 0
    fin: Finished | None = None
    async for event in engine.generate(req):
        if isinstance(event, Piece):
            pieces += 1
            if pieces == 3:
                engine.abort("long")
        elif isinstance(event, Finished):
            fin = event
    assert fin is not None and fin.reason is FinishReason.CANCELLED
    assert fin.output_tokens < 100
    assert engine.stats().running_sequences == 0
    assert engine._llm.get_num_unfinished_requests() == 0


async def test_closing_the_stream_aborts_inside_vllm(engine: VllmEngine) -> None:
    stream = engine.generate(EngineRequest("closed", prompt="Tell me a story.", max_tokens=1500))
    async for event in stream:
        if isinstance(event, Piece):
            break
    await stream.aclose()
    await _wait_until(lambda: engine._llm.get_num_unfinished_requests() == 0, 5.0)
    assert engine._llm.get_num_unfinished_requests() == 0
    assert engine.stats().running_sequences == 0


async def test_a_repeated_prefix_reports_the_tokens_vllm_had_cached(engine: VllmEngine) -> None:
    document = " ".join(f"Line {i}: the quick brown fox jumps over the dog." for i in range(40))
    first = EngineRequest("apc1", prompt=f"{document}\nSummarise.", sampling=GREEDY, max_tokens=2)
    *_, cold, _ = await _collect(engine, first)
    again = dataclasses.replace(first, request_id="apc2", prompt=f"{document}\nCount the lines.")
    *_, warm, _ = await _collect(engine, again)
    # Automatic prefix caching reuses whole KV blocks of the shared document.
    assert cold.cached_input_tokens < 64 <= warm.cached_input_tokens < warm.input_tokens
    snap = engine.stats()
    assert snap.cached_prompt_tokens_total >= warm.cached_input_tokens
    assert snap.prompt_tokens_total >= cold.input_tokens + warm.input_tokens


async def test_a_json_schema_and_logprobs_reach_vllm(engine: VllmEngine) -> None:
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 16},
            "kind": {"enum": ["capital", "town"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
        },
        "required": ["city", "kind", "tags"],
        "additionalProperties": False,
    }
    req = EngineRequest(
        "json",
        messages=[ChatTurn("user", "Name the capital of France.")],  # free text without it
        sampling=GREEDY,
        max_tokens=64,
        output_format=OutputFormat(json.dumps(schema)),
        logprobs=2,
    )
    pieces = [e async for e in engine.generate(req) if isinstance(e, Piece)]
    jsonschema.validate(json.loads("".join(p.text for p in pieces)), schema)
    ids = [t for p in pieces for t in p.token_ids]
    logprobs = [lp for p in pieces for lp in p.logprobs]
    assert [lp.token_id for lp in logprobs] == ids  # one per token id, aligned
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in logprobs)
    assert all(lp.top[0].logprob >= lp.top[1].logprob for lp in logprobs)
    # An id outside the vocabulary is the client's error, before vLLM sees it.
    with pytest.raises(InvalidArgument):
        await _collect(engine, EngineRequest("bias", prompt="Hi", logit_bias={10**7: 1.0}))


async def test_twenty_sampled_json_schema_answers_all_stop_and_validate(
    engine: VllmEngine,
) -> None:
    """Temperature 1, seeds 0..19, one batch: nested object, enum and array, each answer
    ends with stop (not length) and validates. vLLM's structured outputs, not luck."""
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "mood": {"enum": ["happy", "sleepy", "grumpy"]},
            "toys": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2},
            "owner": {
                "type": "object",
                "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["age"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "mood", "toys", "owner"],
        "additionalProperties": False,
    }
    requests = [
        EngineRequest(
            f"cat{seed}",
            messages=[ChatTurn("user", "Describe a cat named Tom.")],
            sampling=SamplingConfig(temperature=1.0, seed=seed),
            max_tokens=200,
            output_format=OutputFormat(json.dumps(schema)),
        )
        for seed in range(20)
    ]
    answers = await asyncio.gather(*(_collect(engine, r) for r in requests))
    for text, _, finished, _ in answers:
        assert finished.reason is FinishReason.STOP, text
        jsonschema.validate(json.loads(text), schema)
    assert len({text for text, *_ in answers}) > 1  # sampled, not one greedy answer


async def test_a_regex_and_a_grammar_reach_vllm(engine: VllmEngine) -> None:
    import re

    plate = "[A-Z]{3}-[0-9]{4}"
    sampled = SamplingConfig(temperature=1.0, seed=3)
    req = EngineRequest(
        "regex", prompt="A licence plate:", sampling=sampled, max_tokens=12,
        output_format=OutputFormat(regex=plate),
    )  # fmt: skip
    pieces = [e async for e in engine.generate(req) if isinstance(e, Piece)]
    assert re.fullmatch(plate, "".join(p.text for p in pieces))
    lark = OutputFormat(grammar='start: "Yes." | "No."', grammar_syntax="lark")
    req = EngineRequest("lark", prompt="Is the sky green?", max_tokens=8, output_format=lark)
    pieces = [e async for e in engine.generate(req) if isinstance(e, Piece)]
    assert "".join(p.text for p in pieces) in {"Yes.", "No."}
    # A grammar vLLM cannot compile is the client's error, naming the field.
    broken = OutputFormat(grammar="root ::= nowhere")
    with pytest.raises(InvalidArgument) as caught:
        await _collect(engine, EngineRequest("bad", prompt="Hi", output_format=broken))
    assert caught.value.violations[0].field == "sampling.response_format.grammar"
