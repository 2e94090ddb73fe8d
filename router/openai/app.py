"""The Starlette app: four endpoints that translate to the router's own operations.

The front runs in the router's process and calls the router in process (no gRPC hop):
the same validation, resolution, scheduling, retries, stats and deadlines as a gRPC
client gets. `Admission` (router/openai/admission.py) checks the API key
(`Authorization: Bearer <key>`) and the size and concurrency limits before the body is
read. A request is cancelled when its HTTP client goes away (so the worker stops
decoding). Errors before the first token answer with the matching HTTP
status; a failure after the stream has started ends it with an `error` event, which the
OpenAI SDK raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from modelyard.auth import Caller, enter_caller
from modelyard.bearer import bearer_token
from modelyard.errors import ModelyardError, Unauthenticated
from modelyard.refs import key_of
from modelyard.v1 import router_pb2
from router.auth import client_rule, operator_rule
from router.cache import cache_header
from router.openai.admission import Admission, FrontLimits
from router.openai.choices import chunks, collect
from router.openai.embeddings import embedding_request, embedding_response
from router.openai.errors import OpenAIError, forbidden, from_error, invalid, unauthorized
from router.openai.outcomes import StatsOperations, outcome_routes
from router.openai.probes import OPEN_PATHS, probe_routes
from router.openai.responses import Shape
from router.openai.translate import Translated, chat_request, completion_request

log = logging.getLogger(__name__)

T = TypeVar("T")

Events = AsyncGenerator[router_pb2.GenerateResponse, None]

# Lists the unknown body parameters the front ignored (MODELYARD_ROUTER_HTTP_IGNORE_UNKNOWN_PARAMS).
IGNORED_HEADER = "x-modelyard-ignored-params"


class RouterOperations(Protocol):
    """What the front needs of the router (router.api.RouterApi in production)."""

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> Events: ...

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse: ...


@runtime_checkable
class EmbedOperations(Protocol):
    """The router's embeddings (RouterApi has them; a front over a router without them
    answers /v1/embeddings with 501)."""

    async def embed(
        self, request: router_pb2.EmbedRequest, *, timeout_s: float | None
    ) -> router_pb2.EmbedResponse: ...


def build_app(
    router: RouterOperations,
    *,
    api_keys: Sequence[str] = (),
    operator_keys: Sequence[str] = (),
    timeout_s: float = 600.0,
    limits: FrontLimits | None = None,
    ignore_unknown: bool = False,
    serving: Callable[[], bool] = lambda: True,
    metrics: CollectorRegistry | None = None,
    outcomes: StatsOperations | None = None,
) -> Starlette:
    """The HTTP front over `router`; `api_keys` (none: open) guard every endpoint but
    /health and /metrics (router/openai/probes.py says why), and /v1/stats takes an
    `operator_keys` key (router/auth.py), `limits` bound the body size
    and requests in flight, and `timeout_s` caps each request. `ignore_unknown` ignores
    unknown body parameters (listed in a header) rather than refusing them; /health
    follows `serving` and /metrics exposes `metrics`; with `outcomes`, /v1/feedback and
    /v1/stats (router/openai/outcomes.py) are served too."""
    front = _Front(router, api_keys, operator_keys, timeout_s, ignore_unknown)
    admission = Middleware(
        Admission,
        authorize=front._authorize,
        limits=limits or FrontLimits(),
        open_paths=OPEN_PATHS,
    )
    # Outermost: an incoming `traceparent` continues into the request's server span, which
    # parents the router's own span; refusals are traced too. No span per SSE chunk, and
    # none for probes and scrapes.
    tracing = Middleware(
        OpenTelemetryMiddleware,
        excluded_urls=",".join(OPEN_PATHS),
        exclude_spans=["receive", "send"],
    )
    return Starlette(
        middleware=[tracing, admission],
        routes=[
            Route("/v1/chat/completions", front.chat, methods=["POST"]),
            Route("/v1/completions", front.completions, methods=["POST"]),
            Route("/v1/models", front.models, methods=["GET"]),
            Route("/v1/embeddings", front.embeddings, methods=["POST"]),
            *(outcome_routes(outcomes, timeout_s) if outcomes is not None else ()),
            *probe_routes(serving, metrics),
        ],
        exception_handlers={
            OpenAIError: _openai_error,
            404: _not_found,
            405: _not_allowed,
        },
    )


class _Front:
    def __init__(
        self,
        router: RouterOperations,
        api_keys: Sequence[str],
        operator_keys: Sequence[str],
        timeout_s: float,
        ignore_unknown: bool,
    ) -> None:
        self._router = router
        self._rule = client_rule(api_keys, (), operator_keys)
        self._operator_rule = operator_rule(api_keys, (), operator_keys)
        self._timeout_s = timeout_s
        self._ignore_unknown = ignore_unknown

    async def chat(self, request: Request) -> Response:
        body = await _json_body(request)
        translated = chat_request(body, ignore_unknown=self._ignore_unknown)
        return await self._generate(request, translated, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await _json_body(request)
        translated = completion_request(body, ignore_unknown=self._ignore_unknown)
        return await self._generate(request, translated, chat=False)

    async def embeddings(self, request: Request) -> Response:
        if not isinstance(self._router, EmbedOperations):
            raise OpenAIError(501, "this router serves no embeddings", type_="server_error")
        call = embedding_request(await _json_body(request), ignore_unknown=self._ignore_unknown)
        work = self._router.embed(call.request, timeout_s=self._deadline(request))
        reply = await _until_disconnect(request, work)
        body = embedding_response(reply, as_base64=call.base64)
        return JSONResponse(body, headers=_ignored_header(call.ignored))

    async def models(self, request: Request) -> Response:
        reply = await _until_disconnect(
            request, self._router.list_models(timeout_s=self._timeout_s)
        )
        data: list[dict[str, Any]] = []
        seen: set[str] = set()
        for servable in reply.models:
            m = servable.model
            created = m.created_at.seconds if m.HasField("created_at") else 0
            for model_id in (m.name, key_of(m)):
                if model_id not in seen:  # the bare name resolves as in gRPC
                    seen.add(model_id)
                    data.append(_model_entry(model_id, created))
        for route in reply.routes:
            if route.name not in seen:
                seen.add(route.name)
                data.append(_model_entry(route.name, 0))
        return JSONResponse({"object": "list", "data": data})

    def _authorize(self, request: Request) -> None:
        """401 unless the request carries one of the API keys (when any are configured)."""
        path = request.url.path
        rule = self._operator_rule if self._operator_rule.covers(path) else self._rule
        if not rule.enabled:
            return
        sent = bearer_token(request.headers.items())
        outcome = rule.decide(f"{request.method} {path}", sent, ())
        if isinstance(outcome, Caller):
            enter_caller(outcome)
            return
        if isinstance(outcome, Unauthenticated):
            raise unauthorized("no API key: send 'Authorization: Bearer <key>'", missing=True)
        if rule is self._operator_rule and isinstance(self._rule.decide("", sent, ()), Caller):
            raise forbidden(f"{path} needs an operator key (MODELYARD_ROUTER_OPERATOR_KEYS)")
        raise unauthorized("the API key is not valid", missing=False)

    async def _generate(
        self,
        request: Request,
        translated: Translated,
        *,
        chat: bool,
    ) -> Response:
        timeout_s = self._deadline(request)
        streams = [self._router.generate(r, timeout_s=timeout_s) for r in translated.requests()]
        try:
            # The relay holds GenerationStarted until the first token: errors up to
            # there (unknown model, no worker, bad input) still get their HTTP status.
            firsts = await _until_disconnect(request, _first_events(streams))
        except BaseException as err:
            for events in streams:
                await events.aclose()
            # The engine names the contract's field; the client sent the extra's name.
            if (
                isinstance(err, OpenAIError)
                and translated.format_param
                and (err.param or "").partition(".")[0] == "response_format"
            ):
                err.param = translated.format_param
            raise
        sampling = translated.request.sampling
        shape = Shape(
            chat, firsts[0].started, logprobs=sampling.logprobs,
            prompt_chars=len(translated.request.prompt),
            parallel_tool_calls=translated.parallel_tool_calls,
        )  # fmt: skip
        headers = {**_ignored_header(translated.ignored), **cache_header(firsts[0].started)}
        if translated.stream:
            stream = _stream(request, streams, shape, translated.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        whole = await _until_disconnect(request, collect(streams, shape))
        return JSONResponse(whole, headers=headers)

    def _deadline(self, request: Request) -> float:
        # The OpenAI SDK sends its own timeout; never wait longer than the client does.
        hinted = request.headers.get("x-stainless-timeout", "")
        with contextlib.suppress(ValueError):
            seconds = float(hinted)
            if math.isfinite(seconds) and seconds > 0:
                return min(self._timeout_s, seconds)
        return self._timeout_s


async def _first_events(streams: Sequence[Events]) -> list[router_pb2.GenerateResponse]:
    """Each stream's first event; the first error once every stream has answered (so none
    is still running when the caller closes them all)."""
    firsts = await asyncio.gather(*map(anext, streams), return_exceptions=True)
    for first in firsts:
        if isinstance(first, BaseException):
            raise first
    return [f for f in firsts if not isinstance(f, BaseException)]


def _ignored_header(ignored: Sequence[str]) -> dict[str, str]:
    """The header naming the ignored parameters: percent-encoded (a key may hold any
    character, a header may not) and at most 32 of them (a body may hold thousands)."""
    if not ignored:
        return {}
    names = [quote(name, safe="") for name in ignored[:32]]
    return {IGNORED_HEADER: ",".join(names + (["..."] if len(ignored) > 32 else []))}


def _model_entry(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "modelyard"}


async def _stream(
    request: Request, streams: Sequence[Events], shape: Shape, with_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE body. A client that goes away cancels the task streaming it, which closes
    the relay (and so the worker call)."""
    streaming = asyncio.current_task()
    left = asyncio.Event()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, streaming, left))
    try:
        async with aclosing(chunks(streams, shape, with_usage)) as body:
            async for chunk in body:
                yield chunk
    except asyncio.CancelledError:
        if not left.is_set() or streaming is None:
            raise
        streaming.uncancel()  # our own cancel: the client left; nobody to tell
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(
    request: Request, streaming: asyncio.Task[Any] | None, left: asyncio.Event
) -> None:
    """Cancel the streaming task once the HTTP client disconnects."""
    await _wait_disconnect(request)
    left.set()
    if streaming is not None:
        streaming.cancel()


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, or cancel it (and wait for it to unwind) if the client disconnects."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    watcher: asyncio.Future[None] = asyncio.ensure_future(_wait_disconnect(request))
    either: list[asyncio.Future[Any]] = [task, watcher]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
        raise OpenAIError(499, "client disconnected", code="cancelled")
    try:
        return task.result()
    except ModelyardError as err:
        raise from_error(err) from err
    except StopAsyncIteration as err:
        raise OpenAIError(502, "the router's stream ended early", type_="server_error") from err


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; anything else is a 400 saying what is wrong with it
    (never the parser's own text, never a 500: deep nesting and 5,000-digit numbers
    stop Python's parser with errors of their own)."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid(f"the request body is not valid UTF-8 (byte {err.start})") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise invalid(f"the request body is not valid JSON ({err.msg} at {where})") from None
    except _NotJson as err:
        raise invalid(f"the request body is not valid JSON ({err} is not a JSON value)") from None
    except RecursionError:
        raise invalid("the request body nests too deeply") from None
    except ValueError:  # int() refuses numbers of more than 4300 digits
        raise invalid("the request body holds a number too long to read") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON (and OpenAI) does not have them.
    raise _NotJson(name)


async def _openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return OpenAIError(404, f"unknown path {request.url.path}", code="unknown_url").response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return OpenAIError(405, f"{request.method} is not allowed here").response()
