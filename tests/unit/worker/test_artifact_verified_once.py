"""An artifact is hashed once per file identity, across store restarts, and again on change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from modelyard.errors import FailedPrecondition
from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore
from worker.artifacts import files as artifact_files
from worker.artifacts import store as store_module

BODY = b"GGUF weights " * 1000


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the store hashes, in order."""
    calls: list[Path] = []
    real = artifact_files.sha256_path

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(store_module, "sha256_path", counting)
    return calls


def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))


def artifact(path: Path, body: bytes = BODY) -> model_pb2.Artifact:
    return model_pb2.Artifact(uri=path.as_uri(), sha256=hashlib.sha256(body).hexdigest())


async def test_a_restarted_store_does_not_hash_an_unchanged_file_again(
    tmp_path: Path, hashed: list[Path]
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(BODY)
    await store(tmp_path).fetch(artifact(model))
    await store(tmp_path).fetch(artifact(model))  # a new worker process on the same cache
    await store(tmp_path).fetch(artifact(model))
    assert hashed == [model]


async def test_a_replaced_file_is_hashed_again_and_refused(
    tmp_path: Path, hashed: list[Path]
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(BODY)
    await store(tmp_path).fetch(artifact(model))
    stat = model.stat()
    # Replaced by a file of the same size with the old mtime put back: its inode differs.
    replaced = tmp_path / "new.gguf"
    replaced.write_bytes(BODY.replace(b"GGUF", b"FUGG", 1))
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replaced, model)
    with pytest.raises(FailedPrecondition) as err:
        await store(tmp_path).fetch(artifact(model))
    assert err.value.reason == "CHECKSUM_MISMATCH"
    assert hashed == [model, model]


async def test_a_touched_file_is_hashed_again(tmp_path: Path, hashed: list[Path]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(BODY)
    s = store(tmp_path)
    await s.fetch(artifact(model))
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    await s.fetch(artifact(model))
    await store(tmp_path).fetch(artifact(model))
    assert hashed == [model, model]


async def test_an_unreadable_record_only_costs_a_hash(tmp_path: Path, hashed: list[Path]) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(BODY)
    await store(tmp_path).fetch(artifact(model))
    (tmp_path / "cache" / "verified.json").write_text("{not json")
    await store(tmp_path).fetch(artifact(model))
    await store(tmp_path).fetch(artifact(model))
    assert hashed == [model, model]
