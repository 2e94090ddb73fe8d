"""The floor of a Python gRPC router, for the mesh bench: a grpc.aio process that relays
WorkerService.Generate to one worker as raw bytes, with nothing else (no parsing,
scheduling, accounting, tracing or limits). What it costs per request is what grpc.aio
itself costs to pass one 16-token stream through a process on this machine.

    python -m bench.grpc_relay --port P --worker HOST:PORT
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

METHOD = "/modelyard.v1.WorkerService/Generate"


def _as_is(data: bytes) -> bytes:
    return data


async def serve(port: int, worker: str) -> None:
    channel = grpc.aio.insecure_channel(worker)
    upstream = channel.unary_stream(METHOD, request_serializer=_as_is, response_deserializer=_as_is)

    async def generate(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or () if k == "authorization"
        )
        async for message in upstream(request, metadata=metadata, timeout=context.time_remaining()):
            yield message

    handler = grpc.method_handlers_generic_handler(
        "modelyard.v1.WorkerService",
        {"Generate": grpc.unary_stream_rpc_method_handler(generate, _as_is, _as_is)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.worker))


if __name__ == "__main__":
    main()
