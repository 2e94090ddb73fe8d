"""Python client SDK for the modelyard router (sync and async).

    from modelyard.client import Client

    with Client("127.0.0.1:50050") as client:
        stream = client.generate(model="smollm2-135m-instruct", prompt="Hello")
        for delta in stream:
            print(delta.text, end="", flush=True)
        print(stream.finished.usage.output_tokens)

Failed calls raise the domain errors of `modelyard.errors` (NotFound,
InvalidArgument with its field violations, Unavailable, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.errors import from_rpc_error
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50050"
DEFAULT_TIMEOUT_S = 300.0

Message = common_pb2.ChatMessage | Mapping[str, str]


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


def _credentials(ca_file: str, cert_file: str, key_file: str) -> grpc.ChannelCredentials | None:
    """TLS credentials when a CA (or a client certificate, for mTLS) is given, else None.

    `api_key` (MODELYARD_ROUTER_API_KEYS on the router) goes as `authorization: Bearer`.
    """
    if not (ca_file or cert_file):
        return None

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file),
        private_key=read(key_file) if cert_file else None,
        certificate_chain=read(cert_file),
    )


def _tls_options(server_name: str) -> list[tuple[str, str]]:
    """`tls_server_name`: the name to verify in the router's certificate instead of the
    dialled host (e.g. a router reached by IP)."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


class Client:
    """Blocking client for RouterService."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str = "",
        tls_ca_file: str = "",
        tls_cert_file: str = "",
        tls_key_file: str = "",
        tls_server_name: str = "",
    ) -> None:
        # -- security (see _credentials) --
        credentials = _credentials(tls_ca_file, tls_cert_file, tls_key_file)
        self._channel = (
            grpc.secure_channel(address, credentials, options=_tls_options(tls_server_name))
            if credentials is not None
            else grpc.insecure_channel(address)
        )
        # -- end security --
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = (*metadata, *bearer_metadata(api_key))

    def generate(self, *, timeout_s: float | None = None, **kwargs: Any) -> GenerationStream:
        """Start a streamed generation; see `build_request` for the arguments."""
        call = self._stub.Generate(
            build_request(**kwargs),
            timeout=timeout_s or self._timeout_s,
            metadata=self._metadata,
        )
        return GenerationStream(call)

    def complete(
        self, *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.CompleteResponse:
        """Run a generation and return it whole."""
        request = router_pb2.CompleteRequest.FromString(build_request(**kwargs).SerializeToString())
        try:
            response: router_pb2.CompleteResponse = self._stub.Complete(
                request, timeout=timeout_s or self._timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return response

    def list_models(self) -> router_pb2.RouterServiceListModelsResponse:
        try:
            response: router_pb2.RouterServiceListModelsResponse = self._stub.ListModels(
                router_pb2.RouterServiceListModelsRequest(),
                timeout=self._timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return response

    def close(self) -> None:
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


class AsyncClient:
    """asyncio client for RouterService."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str = "",
        tls_ca_file: str = "",
        tls_cert_file: str = "",
        tls_key_file: str = "",
        tls_server_name: str = "",
    ) -> None:
        # -- security (see _credentials) --
        credentials = _credentials(tls_ca_file, tls_cert_file, tls_key_file)
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=_tls_options(tls_server_name))
            if credentials is not None
            else grpc.aio.insecure_channel(address)
        )
        # -- end security --
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = (*metadata, *bearer_metadata(api_key))

    def generate(self, *, timeout_s: float | None = None, **kwargs: Any) -> AsyncGenerationStream:
        call = self._stub.Generate(
            build_request(**kwargs),
            timeout=timeout_s or self._timeout_s,
            metadata=self._metadata,
        )
        return AsyncGenerationStream(call)

    async def complete(
        self, *, timeout_s: float | None = None, **kwargs: Any
    ) -> router_pb2.CompleteResponse:
        request = router_pb2.CompleteRequest.FromString(build_request(**kwargs).SerializeToString())
        try:
            response: router_pb2.CompleteResponse = await self._stub.Complete(
                request, timeout=timeout_s or self._timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return response

    async def list_models(self) -> router_pb2.RouterServiceListModelsResponse:
        try:
            response: router_pb2.RouterServiceListModelsResponse = await self._stub.ListModels(
                router_pb2.RouterServiceListModelsRequest(),
                timeout=self._timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return response

    async def close(self) -> None:
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
