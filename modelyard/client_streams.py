"""The streams `Client.generate` returns: the events of one generation as they arrive,
with its GenerationStarted and GenerationFinished kept (proxied or direct alike)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, router_pb2


@dataclass(frozen=True)
class Delta:
    """Newly generated text and the ids of the tokens behind it."""

    text: str
    token_ids: tuple[int, ...]


@dataclass
class _StreamState:
    started: common_pb2.GenerationStarted | None = None
    finished: common_pb2.GenerationFinished | None = None
    chunks: list[str] = field(default_factory=list)

    def absorb(self, event: router_pb2.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "started":
            self.started = event.started
        elif kind == "finished":
            self.finished = event.finished
        elif kind == "delta":
            self.chunks.append(event.delta.text)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class _Stream:
    """What both stream flavours share: the call, and what arrived so far."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._state = _StreamState()

    def cancel(self) -> None:
        """Stop the generation; the worker stops decoding."""
        self._call.cancel()

    @property
    def started(self) -> common_pb2.GenerationStarted | None:
        return self._state.started

    @property
    def finished(self) -> common_pb2.GenerationFinished | None:
        return self._state.finished

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._state.text


def _delta(event: router_pb2.GenerateResponse) -> Delta | None:
    if event.WhichOneof("event") != "delta":
        return None
    return Delta(event.delta.text, tuple(event.delta.token_ids))


class GenerationStream(_Stream):
    """A streamed generation: iterate for deltas; `started`/`finished` bracket them."""

    def __iter__(self) -> Iterator[Delta]:
        for event in self.events():
            if (delta := _delta(event)) is not None:
                yield delta

    def events(self) -> Iterator[router_pb2.GenerateResponse]:
        """Iterate the raw protocol events (started, deltas, finished) instead of deltas."""
        try:
            for event in self._call:
                self._state.absorb(event)
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err


class AsyncGenerationStream(_Stream):
    """The asyncio twin of GenerationStream: `async for delta in stream`."""

    async def __aiter__(self) -> AsyncIterator[Delta]:
        async for event in self.events():
            if (delta := _delta(event)) is not None:
                yield delta

    async def events(self) -> AsyncIterator[router_pb2.GenerateResponse]:
        try:
            async for event in self._call:
                self._state.absorb(event)
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
