"""s3:// artifacts against moto's S3 server, started on loopback by the test."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import FailedPrecondition, NotFound, Unavailable
from modelyard.local_mesh import free_port
from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        # Fake credentials for moto; never anything real.
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.delenv("AWS_PROFILE", raising=False)
        port = free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="models")
    return client


def _store(tmp_path: Path, endpoint: str) -> ArtifactStore:
    return ArtifactStore(
        ArtifactSettings(cache_dir=tmp_path / "cache", s3_endpoint_url=endpoint, timeout_s=5)
    )


async def test_s3_object_is_fetched_verified_and_cached(
    tmp_path: Path, s3_endpoint: str, bucket: Any
) -> None:
    body = b"GGUF" + bytes(range(256)) * 8000
    bucket.put_object(Bucket="models", Key="smol/m.gguf", Body=body)
    store = _store(tmp_path, s3_endpoint)
    artifact = model_pb2.Artifact(
        uri="s3://models/smol/m.gguf", sha256=hashlib.sha256(body).hexdigest()
    )
    progress: list[tuple[int, int | None]] = []
    path = await store.fetch(artifact, progress=lambda d, t: progress.append((d, t)))
    assert path.name == "m.gguf" and path.read_bytes() == body
    assert progress[-1] == (len(body), len(body))
    bucket.delete_object(Bucket="models", Key="smol/m.gguf")
    assert await store.fetch(artifact) == path  # served from the cache: S3 not asked again


async def test_s3_checksum_mismatch_and_missing_key(
    tmp_path: Path, s3_endpoint: str, bucket: Any
) -> None:
    bucket.put_object(Bucket="models", Key="bad.gguf", Body=b"tampered")
    store = _store(tmp_path, s3_endpoint)
    with pytest.raises(FailedPrecondition) as err:
        await store.fetch(model_pb2.Artifact(uri="s3://models/bad.gguf", sha256="a" * 64))
    assert err.value.reason == "CHECKSUM_MISMATCH" and store.entries() == []
    with pytest.raises(NotFound):
        await store.fetch(model_pb2.Artifact(uri="s3://models/absent.gguf"))
    with pytest.raises(NotFound):
        await store.fetch(model_pb2.Artifact(uri="s3://no-such-bucket/x.gguf"))


async def test_s3_unreachable_endpoint_is_unavailable(tmp_path: Path, s3_endpoint: str) -> None:
    del s3_endpoint  # only for the fake credentials it sets
    store = _store(tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable):
        await store.fetch(model_pb2.Artifact(uri="s3://models/m.gguf"))
