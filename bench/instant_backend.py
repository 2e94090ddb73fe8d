"""An OpenAI-compatible backend that answers at once: the peers' stand-in for an engine in
the mesh bench (bench/mesh_bench.py), so what is measured is the router in front of it.

    python -m bench.instant_backend --port 8100 [--chunks 16]

/v1/chat/completions and /v1/completions stream `chunks` one-word chunks back to back
(or answer whole), then usage and [DONE]; /v1/models and /health answer what routers
probe. A plain asyncio HTTP/1.1 server with keep-alive (no framework): the backend must
cost as little as possible, since it shares the cores with the routers under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "instant"


def _chunk(i: int, created: int, word: str, finish: str | None) -> bytes:
    body = {
        "id": f"cmpl-{i}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def stream_body(chunks: int) -> bytes:
    """The whole SSE body: `chunks` content chunks, a usage chunk and [DONE]."""
    created = int(time.time())
    parts = [_chunk(i, created, f" w{i}", None) for i in range(chunks - 1)]
    parts.append(_chunk(chunks - 1, created, f" w{chunks - 1}", "stop"))
    usage = {
        "id": "cmpl-usage",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": chunks, "total_tokens": chunks + 4},
    }
    parts.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def whole_body(chunks: int) -> bytes:
    text = "".join(f" w{i}" for i in range(chunks))
    body = {
        "id": "cmpl-0",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": chunks, "total_tokens": chunks + 4},
    }
    return json.dumps(body).encode()


MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
).encode()


class Backend:
    def __init__(self, chunks: int) -> None:
        self._stream = stream_body(chunks)
        self._whole = whole_body(chunks)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                writer.write(self._answer(method, path, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            streamed = b'"stream":true' in body.replace(b" ", b"")
            if streamed:
                return _response(b"text/event-stream", self._stream)
            return _response(b"application/json", self._whole)
        if path == b"/v1/models":
            return _response(b"application/json", MODELS)
        if path in (b"/health", b"/health_generate", b"/ping", b"/"):
            return _response(b"application/json", b"{}")
        return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _response(kind: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


async def main(port: int, chunks: int) -> None:
    backend = Backend(chunks)
    server = await asyncio.start_server(backend.serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.chunks))
