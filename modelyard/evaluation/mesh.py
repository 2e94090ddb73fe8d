"""The evaluation's calls to the router: a generation (its text and who answered it),
a batch of embeddings, and the routes (to pin an arm). Errors come back as the kernel's
domain errors (`modelyard.errors`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from modelyard.client_connection import Connection
from modelyard.errors import Unavailable, from_rpc_error
from modelyard.evaluation.dataset import Case
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 120.0  # per request
    chat: bool = True  # a `prompt` goes in as a user message (else raw text to complete)


@dataclass(frozen=True)
class Generation:
    text: str
    started: common_pb2.GenerationStarted
    finished: common_pb2.GenerationFinished


def request_for(model: str, case: Case, sampling: Sampling) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(
        model=model,
        sampling=common_pb2.SamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature
        ),
    )
    if case.messages:
        request.messages.extend(common_pb2.ChatMessage(role=r, content=c) for r, c in case.messages)
    elif sampling.chat:
        request.messages.append(common_pb2.ChatMessage(role="user", content=case.prompt))
    else:
        request.prompt = case.prompt
    return request


@dataclass
class _Collected:
    chunks: list[str] = field(default_factory=list)
    started: common_pb2.GenerationStarted | None = None
    finished: common_pb2.GenerationFinished | None = None

    def absorb(self, event: router_pb2.GenerateResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "started":
            self.started = event.started
        elif kind == "delta":
            self.chunks.append(event.delta.text)
        elif kind == "finished":
            self.finished = event.finished


class RouterMesh:
    """One aio channel to a router (TLS, API key and retries as the SDK dials)."""

    def __init__(self, connection: Connection) -> None:
        self._channel = connection.aio_channel()
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._metadata = (
            (("authorization", f"Bearer {connection.api_key}"),) if connection.api_key else ()
        )

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, request: router_pb2.GenerateRequest, timeout_s: float) -> Generation:
        """The whole stream; Unavailable when it ended without its finish event."""
        stream = _Collected()
        try:
            async for event in self._stub.Generate(
                request, timeout=timeout_s, metadata=self._metadata
            ):
                stream.absorb(event)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        if stream.started is None or stream.finished is None:
            raise Unavailable("the generation stream ended before its finish event")
        return Generation("".join(stream.chunks), stream.started, stream.finished)

    async def ask(self, model: str, prompt: str, timeout_s: float) -> str:
        """One short greedy chat turn's text (the judge's score)."""
        request = request_for(model, Case(id="judge", prompt=prompt), Sampling(max_tokens=16))
        return (await self.generate(request, timeout_s)).text

    async def embed(self, model: str, texts: Sequence[str], timeout_s: float) -> list[list[float]]:
        """One vector per text, in input order."""
        try:
            reply: router_pb2.EmbedResponse = await self._stub.Embed(
                router_pb2.EmbedRequest(model=model, inputs=list(texts)),
                timeout=timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        ordered = sorted(reply.embeddings, key=lambda e: e.index)
        return [list(e.values) for e in ordered]

    async def routes(self, timeout_s: float) -> list[model_pb2.Route]:
        try:
            reply: router_pb2.RouterServiceListModelsResponse = await self._stub.ListModels(
                router_pb2.RouterServiceListModelsRequest(),
                timeout=timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return list(reply.routes)
