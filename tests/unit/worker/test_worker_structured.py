"""Structured output, logprobs and logit bias through a real in-process worker serving
the real SmolLM2 on llama.cpp, checked against llama-cpp-python's own numbers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import pytest_asyncio

from modelyard.bundled import smollm2_model
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_events import collect
from tests.worker_stub import serving
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "The three primary colors are"
COLOR_ASK = "Name three primary colors."  # free text without the grammar
JSON_ASK = "Describe a cat named Tom as a JSON object with his name, age and favourite toys."
PLATE = "[A-Z]{3}-[0-9]{4}"
PLATE_ASK = "Make up a licence plate."
YES_NO = 'root ::= ("Yes" | "No") "."'
LARK_ANSWER = """
start: answer " legs."
answer: "Yes" | "No" | NUMBER
NUMBER: /[0-9]{1,3}/
"""
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "mood": {"enum": ["happy", "sleepy", "grumpy"]},
        "toys": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12}},
            "required": ["name"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "mood", "toys", "owner"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def smollm2() -> model_pb2.Model:
    return smollm2_model()


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path, settings: WorkerSettings) -> Iterator[Any]:
    """llama-cpp-python's own API on the same file, keeping every position's logits."""
    from llama_cpp import Llama

    llama = Llama(
        str(smollm2_gguf), n_ctx=256, n_threads=settings.threads, logits_all=True, verbose=False
    )
    yield llama
    llama.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(
    settings: WorkerSettings, smollm2: model_pb2.Model
) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    async with serving(settings, FileCatalogue([smollm2]), loaded=[smollm2]) as client:
        yield client


def request(
    model: model_pb2.Model, prompt: str = PROMPT, *, chat: bool = False, **sampling: Any
) -> worker_pb2.WorkerServiceGenerateRequest:
    sampling.setdefault("temperature", 0.0)
    message = common_pb2.ChatMessage(role="user", content=prompt)
    return worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt="" if chat else prompt,
        messages=[message] if chat else [],
        sampling=common_pb2.SamplingParams(**sampling),
    )


async def generate(
    stub: worker_pb2_grpc.WorkerServiceStub, req: worker_pb2.WorkerServiceGenerateRequest
) -> tuple[list[common_pb2.TokenDelta], common_pb2.GenerationFinished]:
    events = await collect(stub.Generate(req, timeout=120))
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert events[-1].WhichOneof("event") == "finished"
    return deltas, events[-1].finished


async def test_logprobs_of_a_greedy_generation_match_llama_cpp_pythons(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model, reference: Any
) -> None:
    deltas, _ = await generate(stub, request(smollm2, max_tokens=6, logprobs=True, top_logprobs=3))
    ids = [i for d in deltas for i in d.token_ids]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert [lp.token_id for lp in logprobs] == ids and len(ids) == 6  # one per id, aligned
    theirs = reference.create_completion(PROMPT, max_tokens=6, temperature=0, logprobs=3)
    expected = theirs["choices"][0]["logprobs"]
    assert [lp.token.decode() for lp in logprobs] == expected["tokens"]
    rows = zip(logprobs, expected["token_logprobs"], expected["top_logprobs"], strict=True)
    for ours, value, top in rows:
        assert ours.logprob <= 0 and math.isclose(ours.logprob, value, abs_tol=1e-3)
        # Greedy: the chosen token is the most likely one.
        assert ours.top_logprobs[0].token_id == ours.token_id
        assert ours.top_logprobs[0].logprob == ours.logprob
        assert [t.token.decode() for t in ours.top_logprobs] == list(top)
        for alt in ours.top_logprobs:
            assert math.isclose(alt.logprob, top[alt.token.decode()], abs_tol=1e-3)


async def test_no_logprobs_unless_asked(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    deltas, _ = await generate(stub, request(smollm2, max_tokens=3))
    assert all(not d.logprobs for d in deltas)


async def test_a_json_object_format_gives_json(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    fmt = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    deltas, finished = await generate(
        stub, request(smollm2, COLOR_ASK, chat=True, max_tokens=60, response_format=fmt)
    )
    assert finished.finish_reason == common_pb2.FINISH_REASON_STOP
    assert isinstance(json.loads("".join(d.text for d in deltas)), dict)


async def test_a_json_schema_format_gives_valid_json_when_sampling(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    fmt = common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps(SCHEMA)
    )
    for seed in (1, 2):
        req = request(
            smollm2, JSON_ASK, chat=True, max_tokens=200, response_format=fmt,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        deltas, finished = await generate(stub, req)
        assert finished.finish_reason == common_pb2.FINISH_REASON_STOP
        jsonschema.validate(json.loads("".join(d.text for d in deltas)), SCHEMA)


async def test_a_regex_format_is_matched_in_full_when_sampling(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    fmt = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=PLATE)
    texts = []
    for seed in range(5):  # temperature 1: free text would wander off at once
        req = request(
            smollm2, PLATE_ASK, chat=True, max_tokens=16, response_format=fmt,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        deltas, finished = await generate(stub, req)
        texts.append("".join(d.text for d in deltas))
        assert finished.finish_reason == common_pb2.FINISH_REASON_STOP, texts[-1]
        assert re.fullmatch(PLATE, texts[-1]), texts[-1]
    assert len(set(texts)) > 1  # sampled, not one forced string


async def test_a_gbnf_grammar_is_obeyed(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    fmt = common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR,
        grammar=YES_NO,
        grammar_syntax=common_pb2.GRAMMAR_SYNTAX_GBNF,
    )
    for seed in (1, 2):
        req = request(
            smollm2, "Is the sky green?", chat=True, max_tokens=8, response_format=fmt,
            temperature=1.0, seed=seed,
        )  # fmt: skip
        deltas, finished = await generate(stub, req)
        assert finished.finish_reason == common_pb2.FINISH_REASON_STOP
        assert "".join(d.text for d in deltas) in {"Yes.", "No."}


async def test_a_lark_grammar_is_obeyed(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    """Lark runs in llguidance over llama.cpp's vocabulary: rules, a regex terminal, and
    the end of generation allowed once the grammar is complete."""
    fmt = common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR,
        grammar=LARK_ANSWER,
        grammar_syntax=common_pb2.GRAMMAR_SYNTAX_LARK,
    )
    texts = set()
    for seed in (1, 2, 3, 4):
        req = request(
            smollm2, "How many legs has a cat?", chat=True, max_tokens=12,
            response_format=fmt, temperature=1.0, seed=seed,
        )  # fmt: skip
        deltas, finished = await generate(stub, req)
        text = "".join(d.text for d in deltas)
        assert finished.finish_reason == common_pb2.FINISH_REASON_STOP, text
        assert re.fullmatch(r"(Yes|No|[0-9]{1,3}) legs\.", text), text
        texts.add(text)
    free, _ = await generate(stub, request(smollm2, "How many legs has a cat?", chat=True))
    assert not re.fullmatch(r"(Yes|No|[0-9]{1,3}) legs\.", "".join(d.text for d in free))


async def test_a_logit_bias_of_minus_100_bans_the_greedy_token(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2: model_pb2.Model
) -> None:
    deltas, _ = await generate(stub, request(smollm2, max_tokens=1))
    first = deltas[0].token_ids[0]
    deltas, _ = await generate(stub, request(smollm2, max_tokens=1, logit_bias={first: -100}))
    assert deltas[0].token_ids[0] != first
    # A positive bias makes a token the greedy choice.
    deltas, _ = await generate(stub, request(smollm2, max_tokens=1, logit_bias={42: 100}))
    assert deltas[0].token_ids == [42]


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "sampling.top_logprobs"),
        ({"top_logprobs": 2}, "sampling.top_logprobs"),
        ({"logit_bias": {5: 100.5}}, "sampling.logit_bias[5]"),
        ({"logit_bias": {10_000_000: 1.0}}, "sampling.logit_bias[10000000]"),
        ({"logit_bias": {i: 1.0 for i in range(301)}}, "sampling.logit_bias"),
        (
            {"response_format": {"type": 3, "json_schema": "{not json"}},
            "sampling.response_format.json_schema",
        ),
        (
            {"response_format": {"type": 3, "json_schema": '{"type": "no-such-type"}'}},
            "sampling.response_format.json_schema",
        ),
        (
            {"response_format": {"type": 2, "json_schema": "{}"}},
            "sampling.response_format.json_schema",
        ),
        ({"response_format": {"type": 9}}, "sampling.response_format.type"),
        # Compiles in Python, but a grammar cannot say it (a backreference).
        ({"response_format": {"type": 4, "regex": r"(a)\1"}}, "sampling.response_format.regex"),
        # Over llama.cpp's repetition limit: its grammar parser refuses it.
        ({"response_format": {"type": 4, "regex": "a{5000}"}}, "sampling.response_format.regex"),
        (
            {"response_format": {"type": 5, "grammar": "root ::= nowhere", "grammar_syntax": 1}},
            "sampling.response_format.grammar",
        ),
        (
            {"response_format": {"type": 5, "grammar": 'root ::= "a" (', "grammar_syntax": 1}},
            "sampling.response_format.grammar",
        ),
        # Lark, through llguidance: an undefined rule, a syntax error.
        (
            {"response_format": {"type": 5, "grammar": "start: nowhere", "grammar_syntax": 2}},
            "sampling.response_format.grammar",
        ),
        (
            {"response_format": {"type": 5, "grammar": 'start: "a" (', "grammar_syntax": 2}},
            "sampling.response_format.grammar",
        ),
        # Compiles, but no token can ever match (llama.cpp alone would abort the process).
        (
            {
                "response_format": {
                    "type": 5,
                    "grammar": r"root ::= [^\x00-\U0010FFFF]",
                    "grammar_syntax": 1,
                }
            },
            "sampling.response_format.grammar",
        ),
        ({"response_format": {"type": 4, "regex": "\x00"}}, "sampling.response_format.regex"),
    ],
)
async def test_bad_structured_fields_are_invalid_argument_naming_the_field(
    stub: worker_pb2_grpc.WorkerServiceStub,
    smollm2: model_pb2.Model,
    sampling: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await generate(stub, request(smollm2, max_tokens=1, **sampling))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == [field]
