"""n choices: n generation streams read together, as one reply or one SSE stream whose
chunks carry their choice's index (each choice's finish when it ends, then the summed
usage and [DONE] once all have)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from modelyard.errors import ModelyardError
from modelyard.v1 import common_pb2, router_pb2
from router.openai.errors import OpenAIError, from_error
from router.openai.responses import Choice, Shape, finish_reason, sse
from router.openai.tools import chunk_calls, gather, kept

log = logging.getLogger(__name__)

Events = AsyncGenerator[router_pb2.GenerateResponse, None]
_END = object()


async def merged(streams: Sequence[Events]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, event) from every stream as they come; the first error ends all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for event in only:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: Events) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        except Exception as err:  # handed to the reader, who raises it
            queue.put_nowait((index, err))
        queue.put_nowait((index, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def collect(streams: Sequence[Events], shape: Shape) -> dict[str, Any]:
    try:
        return await _collect(streams, shape)
    finally:
        for stream in streams:
            await stream.aclose()


async def _collect(streams: Sequence[Events], shape: Shape) -> dict[str, Any]:
    texts: list[list[str]] = [[] for _ in streams]
    logprobs: list[list[common_pb2.TokenLogprob]] = [[] for _ in streams]
    finishes: list[common_pb2.GenerationFinished | None] = [None for _ in streams]
    calls: list[list[dict[str, Any]]] = [[] for _ in streams]
    # Read to the streams' ends, past the finish (as the gRPC servicer does): closing one
    # early cancels the worker call, whose client span then never ends nor reaches the trace.
    async for index, event in merged(streams):
        kind = event.WhichOneof("event")
        if kind == "delta":
            texts[index].append(event.delta.text)
            logprobs[index].extend(event.delta.logprobs)
            gather(calls[index], kept(event.delta.tool_calls, shape.parallel_tool_calls))
        elif kind == "finished":
            finishes[index] = event.finished
    choices = []
    for text, lps, finished, made in zip(texts, logprobs, finishes, calls, strict=True):
        if finished is None:
            raise OpenAIError(
                502, "the router's stream ended without a finish", type_="server_error"
            )
        choices.append(Choice("".join(text), finished, lps, made))
    return shape.whole(choices)


async def chunks(
    streams: Sequence[Events], shape: Shape, with_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The SSE chunks; closing it closes every stream (and so their worker calls)."""
    try:
        async for chunk in _chunks(streams, shape, with_usage):
            yield chunk
    finally:
        for stream in streams:
            await stream.aclose()


async def _chunks(
    streams: Sequence[Events], shape: Shape, with_usage: bool
) -> AsyncIterator[bytes]:
    finishes: list[common_pb2.GenerationFinished] = []
    offsets = [0 for _ in streams]  # text streamed per choice (legacy logprob offsets)
    try:
        if shape.chat:
            for index in range(len(streams)):  # the role comes first, as OpenAI sends it
                yield sse(shape.chunk("", index=index))
        async for index, event in merged(streams):
            kind = event.WhichOneof("event")
            if kind == "finished":  # then on to the stream's end (see collect)
                finishes.append(event.finished)
                reason = finish_reason(event.finished)
                yield sse(shape.chunk(None if shape.chat else "", reason, index))
            if kind != "delta":
                continue
            calls = chunk_calls(kept(event.delta.tool_calls, shape.parallel_tool_calls))
            if event.delta.text or event.delta.logprobs or calls:
                logprobs = shape.logprobs_of(event.delta.logprobs, offsets[index])
                offsets[index] += len(event.delta.text)
                yield sse(shape.chunk(event.delta.text, None, index, logprobs, calls))
        if with_usage:
            yield sse(shape.usage_chunk(finishes))
        yield sse("[DONE]")
    except ModelyardError as err:
        log.warning("stream %s failed after it started: %s", shape.id, err.message)
        yield sse(from_error(err).body())
