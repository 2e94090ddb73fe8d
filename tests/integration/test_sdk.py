"""The Python SDK against the real mesh, sync and async."""

from __future__ import annotations

import pytest

from modelyard.client import AsyncClient, Client
from modelyard.errors import InvalidArgument, NotFound
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2


def test_sync_client_streams_deltas(mesh: LocalMesh, smollm2: model_pb2.Model) -> None:
    with Client(mesh.router_address) as client:
        stream = client.generate(model=smollm2.name, prompt="Once upon a time", max_tokens=12)
        deltas = list(stream)
        assert deltas
        assert stream.finished is not None
        assert stream.finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas)
        assert stream.text == "".join(d.text for d in deltas)
        assert stream.started is not None and stream.started.model == smollm2.name


def test_sync_client_raises_domain_errors(mesh: LocalMesh, smollm2: model_pb2.Model) -> None:
    with Client(mesh.router_address) as client:
        with pytest.raises(NotFound):
            list(client.generate(model="nope", prompt="x"))
        with pytest.raises(InvalidArgument) as info:
            list(client.generate(model=smollm2.name, prompt="x", temperature=-1.0))
        assert [v.field for v in info.value.violations] == ["sampling.temperature"]


async def test_async_client_streams_chat(mesh: LocalMesh, smollm2: model_pb2.Model) -> None:
    async with AsyncClient(mesh.router_address) as client:
        stream = client.generate(
            model=smollm2.name,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=10,
            temperature=0.0,
        )
        texts = [delta.text async for delta in stream]
        assert "".join(texts) == stream.text
        assert stream.finished is not None
        assert stream.finished.finish_reason in (
            common_pb2.FINISH_REASON_LENGTH,
            common_pb2.FINISH_REASON_STOP,
        )
        reply = await client.complete(model=smollm2.name, prompt="Hi", max_tokens=4)
        assert reply.finished.usage.output_tokens == len(reply.token_ids)
