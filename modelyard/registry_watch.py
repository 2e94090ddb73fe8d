"""The registry's catalogue Watch as a stream a client iterates (modelyard.registry_client):
a snapshot (unless resuming), then every change in revision order; `cancel()` (or leaving
its `with` block) ends the iteration quietly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import grpc

from modelyard.errors import from_rpc_error
from modelyard.v1 import registry_pb2


class _Watch:
    """What both watch flavours share: the call, and whether this side cancelled it."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def cancel(self) -> None:
        """Close the stream; iteration then ends without an error."""
        self._cancelled = True
        self._call.cancel()

    def _ended_by_us(self, err: grpc.RpcError) -> bool:
        return self._cancelled and err.code() == grpc.StatusCode.CANCELLED


class WatchStream(_Watch):
    """The catalogue watch: a snapshot (unless resuming), then every change in revision
    order, for as long as it stays open. Use it as a context manager to close it."""

    def __iter__(self) -> Iterator[registry_pb2.WatchResponse]:
        try:
            yield from self._call
        except grpc.RpcError as err:
            if not self._ended_by_us(err):
                raise from_rpc_error(err) from err

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class AsyncWatchStream(_Watch):
    """The asyncio twin of WatchStream: `async for event in stream`."""

    async def __aiter__(self) -> AsyncIterator[registry_pb2.WatchResponse]:
        try:
            async for event in self._call:
                yield event
        except grpc.RpcError as err:
            if not self._ended_by_us(err):
                raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            # grpc.aio reports its own cancel() as CancelledError; the task's is not ours.
            task = asyncio.current_task()
            if not self._cancelled or (task is not None and task.cancelling()):
                raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
