"""Python client SDK for the modelyard router (sync and async).

    from modelyard.client import Client

    with Client() as client:  # MODELYARD_ROUTER, else 127.0.0.1:50050
        stream = client.generate(model="smollm2-135m-instruct", prompt="Hello")
        for delta in stream:
            print(delta.text, end="", flush=True)
        print(stream.finished.usage.output_tokens)

Failed calls raise the domain errors of `modelyard.errors` (NotFound,
InvalidArgument with its field violations, Unavailable, ...). UNAVAILABLE and
RESOURCE_EXHAUSTED are retried before the first event arrives, never after
(client_connection.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.client_connection import DEFAULT_ADDRESS, Connection
from modelyard.client_streams import (
    AsyncGenerationStream,
    Delta,
    GenerationStream,
)
from modelyard.direct import AsyncDirectCall, DirectCall, Picks, WorkerChannels
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "AsyncGenerationStream",
    "Client",
    "Connection",
    "Delta",
    "GenerationStream",
    "build_request",
]
DEFAULT_TIMEOUT_S = 300.0

Message = common_pb2.ChatMessage | Mapping[str, str]


def build_request(
    *,
    model: str = "",
    prompt: str = "",
    messages: Sequence[Message] = (),
    max_tokens: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int = 0,
    stop: Sequence[str] = (),
    seed: int | None = None,
    priority: int = common_pb2.PRIORITY_UNSPECIFIED,
    objective: int = common_pb2.OBJECTIVE_UNSPECIFIED,
    session_key: str = "",
    request_id: str = "",
) -> router_pb2.GenerateRequest:
    """Build a GenerateRequest from keyword arguments (unset ones keep server defaults)."""
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, top_k=top_k, stop=list(stop))
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if seed is not None:
        sampling.seed = seed
    return router_pb2.GenerateRequest(
        model=model,
        prompt=prompt,
        messages=[_message(m) for m in messages],
        sampling=sampling,
        priority=priority,  # type: ignore[arg-type]
        hints=common_pb2.RoutingHints(objective=objective, session_key=session_key),  # type: ignore[arg-type]
        request_id=request_id,
    )


def _message(m: Message) -> common_pb2.ChatMessage:
    if isinstance(m, common_pb2.ChatMessage):
        return m
    return common_pb2.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", ""))


def _complete_request(kwargs: dict[str, Any]) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest.FromString(build_request(**kwargs).SerializeToString())


def embed_request(
    inputs: str | Sequence[str],
    *,
    model: str = "",
    dimensions: int = 0,
    normalize: bool | None = None,
    truncate: bool = False,
) -> router_pb2.EmbedRequest:
    """An EmbedRequest: one text or several; the model's own pooling."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    params = common_pb2.EmbeddingParams(dimensions=dimensions, truncate=truncate)
    if normalize is not None:
        params.normalize = normalize
    return router_pb2.EmbedRequest(model=model, inputs=texts, params=params)


class _Base:
    """What both clients share: the connection, the call metadata, the default deadline."""

    def __init__(
        self,
        address: str | None,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]],
        **connection: Any,
    ) -> None:
        self.connection = Connection.resolve(address, **connection)
        self._timeout_s = timeout_s
        self._metadata = (*metadata, *bearer_metadata(self.connection.api_key))

    def _call_args(self, timeout_s: float | None = None) -> dict[str, Any]:
        return {"timeout": timeout_s or self._timeout_s, "metadata": self._metadata}


class Client(_Base):
    """Blocking client for RouterService. Unset arguments come from the environment
    (`Connection.resolve`)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        **connection: Any,
    ) -> None:
        super().__init__(address, timeout_s, metadata, **connection)
        self._channel = self.connection.channel()
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._workers = WorkerChannels(self.connection, aio=False)  # direct streams

    def _unary(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, **self._call_args(timeout_s))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def generate(
        self, *, timeout_s: float | None = None, direct: bool = False, **kwargs: Any
    ) -> GenerationStream:
        """Start a streamed generation; see `build_request` for the arguments. `direct`:
        stream from the worker the router picks, the router off the token path
        (modelyard/direct.py; the router needs a ticket key)."""
        if direct:
            picks = Picks(build_request(**kwargs), timeout_s or self._timeout_s)
            return GenerationStream(DirectCall(self._stub, self._workers, picks, self._metadata))
        return GenerationStream(
            self._stub.Generate(build_request(**kwargs), **self._call_args(timeout_s))
        )

    def complete(
        self, *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.CompleteResponse:
        """Run a generation and return it whole."""
        reply: router_pb2.CompleteResponse = self._unary(
            self._stub.Complete, _complete_request(kwargs), timeout_s
        )
        return reply

    def embed(
        self, inputs: str | Sequence[str], *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.EmbedResponse:
        """Vectors for `inputs` (one per input, in order); kwargs: model, dimensions,
        normalize, truncate (see `embed_request`)."""
        reply: router_pb2.EmbedResponse = self._unary(
            self._stub.Embed, embed_request(inputs, **kwargs), timeout_s
        )
        return reply

    def list_models(self) -> router_pb2.RouterServiceListModelsResponse:
        reply: router_pb2.RouterServiceListModelsResponse = self._unary(
            self._stub.ListModels, router_pb2.RouterServiceListModelsRequest()
        )
        return reply

    def list_workers(self) -> router_pb2.ListWorkersResponse:
        reply: router_pb2.ListWorkersResponse = self._unary(
            self._stub.ListWorkers, router_pb2.ListWorkersRequest()
        )
        return reply

    def routing_stats(
        self, *, model: str = "", route: str = "", window_seconds: int = 0
    ) -> router_pb2.GetRoutingStatsResponse:
        """The mesh's stats (`mesh_wide`; this router's alone when the registry is away),
        over the last `window_seconds` (0: all retained)."""
        reply: router_pb2.GetRoutingStatsResponse = self._unary(
            self._stub.GetRoutingStats,
            router_pb2.GetRoutingStatsRequest(
                model=model, route=route, window_seconds=window_seconds
            ),
        )
        return reply

    def record_feedback(self, request_id: str, score: float, comment: str = "") -> None:
        """Score a finished request (its GenerationStarted.request_id) on any router replica,
        with an optional comment (at most 2 KiB); a request takes one score."""
        self._unary(
            self._stub.RecordFeedback,
            router_pb2.RecordFeedbackRequest(request_id=request_id, score=score, comment=comment),
        )

    def close(self) -> None:
        self._workers.close()
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client for RouterService; the same methods as Client, awaited."""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        **connection: Any,
    ) -> None:
        super().__init__(address, timeout_s, metadata, **connection)
        self._channel = self.connection.aio_channel()
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._workers = WorkerChannels(self.connection, aio=True)

    async def _unary(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await method(request, **self._call_args(timeout_s))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def generate(
        self, *, timeout_s: float | None = None, direct: bool = False, **kwargs: Any
    ) -> AsyncGenerationStream:
        if direct:
            picks = Picks(build_request(**kwargs), timeout_s or self._timeout_s)
            call = AsyncDirectCall(self._stub, self._workers, picks, self._metadata)
            return AsyncGenerationStream(call)
        return AsyncGenerationStream(
            self._stub.Generate(build_request(**kwargs), **self._call_args(timeout_s))
        )

    async def complete(
        self, *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.CompleteResponse:
        reply: router_pb2.CompleteResponse = await self._unary(
            self._stub.Complete, _complete_request(kwargs), timeout_s
        )
        return reply

    async def embed(
        self, inputs: str | Sequence[str], *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.EmbedResponse:
        reply: router_pb2.EmbedResponse = await self._unary(
            self._stub.Embed, embed_request(inputs, **kwargs), timeout_s
        )
        return reply

    async def list_models(self) -> router_pb2.RouterServiceListModelsResponse:
        reply: router_pb2.RouterServiceListModelsResponse = await self._unary(
            self._stub.ListModels, router_pb2.RouterServiceListModelsRequest()
        )
        return reply

    async def list_workers(self) -> router_pb2.ListWorkersResponse:
        reply: router_pb2.ListWorkersResponse = await self._unary(
            self._stub.ListWorkers, router_pb2.ListWorkersRequest()
        )
        return reply

    async def routing_stats(
        self, *, model: str = "", route: str = "", window_seconds: int = 0
    ) -> router_pb2.GetRoutingStatsResponse:
        reply: router_pb2.GetRoutingStatsResponse = await self._unary(
            self._stub.GetRoutingStats,
            router_pb2.GetRoutingStatsRequest(
                model=model, route=route, window_seconds=window_seconds
            ),
        )
        return reply

    async def record_feedback(self, request_id: str, score: float, comment: str = "") -> None:
        await self._unary(
            self._stub.RecordFeedback,
            router_pb2.RecordFeedbackRequest(request_id=request_id, score=score, comment=comment),
        )

    async def close(self) -> None:
        for closing in self._workers.close():
            await closing
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
