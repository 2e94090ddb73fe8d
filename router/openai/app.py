"""The Starlette app: three endpoints that translate to RouterService calls.

Every call goes to the router's own gRPC server over loopback, with a deadline, and is
cancelled when the HTTP client goes away (so the worker stops decoding). Errors before
the first token answer with the matching HTTP status; a failure after the stream has
started ends it with an `error` event, which the OpenAI SDK raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard.v1 import router_pb2, router_pb2_grpc
from router.openai import translate
from router.openai.errors import OpenAIError, from_grpc, invalid
from router.openai.responses import Shape, finish_reason, sse

log = logging.getLogger(__name__)

T = TypeVar("T")


def build_app(
    stub: router_pb2_grpc.RouterServiceAsyncStub, *, timeout_s: float = 600.0
) -> Starlette:
    """The HTTP front over `stub` (a RouterService stub); `timeout_s` caps each request."""
    front = _Front(stub, timeout_s)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", front.chat, methods=["POST"]),
            Route("/v1/completions", front.completions, methods=["POST"]),
            Route("/v1/models", front.models, methods=["GET"]),
        ],
        exception_handlers={
            OpenAIError: _openai_error,
            404: _not_found,
            405: _not_allowed,
        },
    )


class _Front:
    def __init__(self, stub: router_pb2_grpc.RouterServiceAsyncStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def chat(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._generate(request, body, translate.chat_request(body), chat=True)

    async def completions(self, request: Request) -> Response:
        body = await _json_body(request)
        return await self._generate(request, body, translate.completion_request(body), chat=False)

    async def models(self, request: Request) -> Response:
        reply = await _until_disconnect(
            request,
            self._stub.ListModels(
                router_pb2.RouterServiceListModelsRequest(),
                timeout=self._timeout_s,
                metadata=_authorization(request),
            ),
        )
        data: list[dict[str, Any]] = []
        seen: set[str] = set()
        for servable in reply.models:
            m = servable.model
            created = m.created_at.seconds if m.HasField("created_at") else 0
            for model_id in (m.name, f"{m.name}@{m.version}"):
                if model_id not in seen:  # the bare name resolves as in gRPC
                    seen.add(model_id)
                    data.append(
                        {
                            "id": model_id,
                            "object": "model",
                            "created": created,
                            "owned_by": "modelyard",
                        }
                    )
        for route in reply.routes:
            if route.name not in seen:
                seen.add(route.name)
                data.append(
                    {"id": route.name, "object": "model", "created": 0, "owned_by": "modelyard"}
                )
        return JSONResponse({"object": "list", "data": data})

    async def _generate(
        self,
        request: Request,
        body: dict[str, Any],
        generate: router_pb2.GenerateRequest,
        *,
        chat: bool,
    ) -> Response:
        call = self._stub.Generate(
            generate, timeout=self._deadline(request), metadata=_authorization(request)
        )
        events = aiter(call)
        try:
            # The router holds GenerationStarted until the first token: errors up to
            # there (unknown model, no worker, bad input) still get their HTTP status.
            first = await _until_disconnect(request, anext(events))
        except BaseException:
            call.cancel()
            raise
        shape = Shape(chat, first.started)
        if translate.wants_stream(body):
            stream = _stream(request, call, events, shape, translate.include_usage(body))
            return StreamingResponse(stream, media_type="text/event-stream")
        try:
            return JSONResponse(await _until_disconnect(request, _collect(events, shape)))
        finally:
            call.cancel()

    def _deadline(self, request: Request) -> float:
        # The OpenAI SDK sends its own timeout; never wait longer than the client does.
        hinted = request.headers.get("x-stainless-timeout", "")
        with contextlib.suppress(ValueError):
            return min(self._timeout_s, float(hinted))
        return self._timeout_s


def _authorization(request: Request) -> tuple[tuple[str, str], ...]:
    """The request's Authorization header as call metadata: the router checks API keys
    (MODELYARD_ROUTER_API_KEYS) on the gRPC call, so OpenAI clients send their key as usual."""
    header = request.headers.get("authorization", "")
    return (("authorization", header),) if header else ()


async def _collect(
    events: AsyncIterator[router_pb2.GenerateResponse], shape: Shape
) -> dict[str, Any]:
    chunks: list[str] = []
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "delta":
            chunks.append(event.delta.text)
        elif kind == "finished":
            return shape.whole("".join(chunks), event.finished)
    raise OpenAIError(502, "the router's stream ended without a finish", type_="server_error")


async def _stream(
    request: Request,
    call: Any,
    events: AsyncIterator[router_pb2.GenerateResponse],
    shape: Shape,
    with_usage: bool,
) -> AsyncIterator[bytes]:
    watcher = asyncio.create_task(_cancel_on_disconnect(request, call))
    try:
        if shape.chat:
            yield sse(shape.chunk(""))  # the role comes first, as OpenAI sends it
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "delta" and event.delta.text:
                yield sse(shape.chunk(event.delta.text))
            elif kind == "finished":
                yield sse(shape.chunk(None if shape.chat else "", finish_reason(event.finished)))
                if with_usage:
                    yield sse(shape.usage_chunk(event.finished))
                yield sse("[DONE]")
                return
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED and watcher.done():
            return  # the client left; nobody to tell
        log.warning("stream %s failed after it started: %s", shape.id, err.details())
        yield sse(from_grpc(err).body())
    finally:
        watcher.cancel()
        call.cancel()


async def _cancel_on_disconnect(request: Request, call: Any) -> None:
    """Cancel the router call once the HTTP client disconnects."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            call.cancel()
            return


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, or cancel it if the client disconnects first."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            raise OpenAIError(499, "client disconnected", code="cancelled")
        try:
            return task.result()
        except grpc.aio.AioRpcError as err:
            raise from_grpc(err) from err
        except StopAsyncIteration as err:
            raise OpenAIError(502, "the router's stream ended early", type_="server_error") from err
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid(f"the request body is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


async def _openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return OpenAIError(404, f"unknown path {request.url.path}", code="unknown_url").response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return OpenAIError(405, f"{request.method} is not allowed here").response()
