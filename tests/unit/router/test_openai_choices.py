"""n choices and logprobs at the OpenAI front, through the official `openai` SDK over a
real HTTP port, against a fake router called in process whose text depends on the seed
and whose deltas carry logprobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import openai
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from modelyard.errors import Unavailable
from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, router_pb2
from router.openai.server import start_http_front

TOKENS = [(b" red", -0.5), (b" gr", -1.0), (b"\xc3", -2.0)]  # the last: half of "é"


def _logprob(token: bytes, value: float) -> common_pb2.TokenLogprob:
    top = [common_pb2.TopLogprob(token_id=9, token=token, logprob=value)]
    top.append(common_pb2.TopLogprob(token_id=8, token=b"x", logprob=value - 1))
    return common_pb2.TokenLogprob(token_id=9, token=token, logprob=value, top_logprobs=top)


class _Router:
    def __init__(self) -> None:
        self.seen: list[router_pb2.GenerateRequest] = []
        self.failing: set[int] = set()  # seeds whose generation fails before its first token

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        self.seen.append(request)
        return self._events(request)

    async def _events(
        self, request: router_pb2.GenerateRequest
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        seed = request.sampling.seed
        if seed in self.failing:
            raise Unavailable("no worker could serve m@1")
        for _ in range(20 if self.failing else 0):
            await asyncio.sleep(0)  # still on its way to a first token when another fails
        yield router_pb2.GenerateResponse(
            started=common_pb2.GenerationStarted(request_id=f"r{seed}", model="m", version="1")
        )
        for i, (token, value) in enumerate(TOKENS):
            await asyncio.sleep(0)  # interleave the choices' streams
            text = f"{seed}:" if i == 0 else ""
            logprobs = [_logprob(token, value)] if request.sampling.logprobs else []
            delta = common_pb2.TokenDelta(text=text, token_ids=[9], logprobs=logprobs)
            yield router_pb2.GenerateResponse(delta=delta)
        yield router_pb2.GenerateResponse(
            finished=common_pb2.GenerationFinished(
                finish_reason=common_pb2.FINISH_REASON_LENGTH,
                usage=common_pb2.Usage(input_tokens=4, output_tokens=3),
            )
        )

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


@pytest_asyncio.fixture
async def front() -> AsyncIterator[tuple[_Router, openai.AsyncOpenAI]]:
    router = _Router()
    http = await start_http_front(f"127.0.0.1:{free_port()}", router)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{http.port}/v1", api_key="x", max_retries=0
    )
    try:
        yield router, client
    finally:
        await client.close()
        await http.stop()


MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def test_n_choices_are_n_generations_with_distinct_seeds_and_summed_usage(
    front: tuple[_Router, openai.AsyncOpenAI],
) -> None:
    router, client = front
    reply = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        n=3,
        seed=10,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == ["10:", "11:", "12:"]
    assert [r.sampling.seed for r in router.seen] == [10, 11, 12]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 9)
    assert all(c.logprobs is None for c in reply.choices)  # not asked


async def test_streamed_choices_carry_their_index_and_finish_each(
    front: tuple[_Router, openai.AsyncOpenAI],
) -> None:
    _, client = front
    stream = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        n=2,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: list[str] = ["", ""]
    finishes: list[str | None] = [None, None]
    chunks = [chunk async for chunk in stream]
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        finishes[choice.index] = finishes[choice.index] or choice.finish_reason
    assert texts == ["1:", "2:"] and finishes == ["length", "length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 6


async def test_chat_logprobs_have_openais_shape(
    front: tuple[_Router, openai.AsyncOpenAI],
) -> None:
    router, client = front
    reply = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=2,
    )
    assert router.seen[-1].sampling.logprobs and router.seen[-1].sampling.top_logprobs == 2
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [lp.bytes for lp in logprobs.content] == [list(t) for t, _ in TOKENS]
    assert [lp.logprob for lp in logprobs.content] == [v for _, v in TOKENS]
    assert logprobs.content[0].token == " red" and logprobs.content[2].token == "\ufffd"
    assert [t.logprob for t in logprobs.content[1].top_logprobs] == [-1.0, -2.0]


async def test_legacy_logprobs_are_parallel_arrays_with_text_offsets(
    front: tuple[_Router, openai.AsyncOpenAI],
) -> None:
    router, client = front
    for stream in (False, True):
        reply: Any = await client.completions.create(
            model="m", prompt="The", logprobs=1, stream=stream
        )
        if stream:
            parts = [c.choices[0].logprobs async for c in reply if c.choices[0].logprobs]
            tokens = [t for p in parts for t in p.tokens or []]
            offsets = [o for p in parts for o in p.text_offset or []]
        else:
            lp = reply.choices[0].logprobs
            assert lp is not None and lp.token_logprobs == [v for _, v in TOKENS]
            assert lp.top_logprobs == [
                {t.decode("utf-8", "replace"): v, "x": v - 1} for t, v in TOKENS
            ]
            tokens, offsets = lp.tokens or [], lp.text_offset or []
        assert tokens == [" red", " gr", "\ufffd"]
        assert offsets[0] == len("The")  # offsets count from the prompt's start
    assert router.seen[-1].sampling.top_logprobs == 1


async def test_one_failing_choice_fails_the_request_and_closes_the_others(
    front: tuple[_Router, openai.AsyncOpenAI],
) -> None:
    router, client = front
    router.failing = {11}
    try:
        await client.chat.completions.create(model="m", messages=MESSAGES, n=2, seed=10)
    except openai.APIStatusError as err:
        assert err.status_code == 503
    else:
        raise AssertionError("a failed choice must fail the request")
