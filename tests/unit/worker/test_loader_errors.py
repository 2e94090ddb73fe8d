"""A model file its engine refuses is FAILED_PRECONDITION ARTIFACT_CORRUPT that names the
model and the engine, never the local path or the library's text (both in the log)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelyard.errors import FailedPrecondition
from modelyard.v1 import common_pb2
from worker.artifacts import ArtifactStore
from worker.artifacts.settings import ArtifactSettings
from worker.config import WorkerSettings
from worker.counters import ChangeNotifier, SequenceCounters
from worker.engines import available_engines
from worker.engines.base import ModelSpec
from worker.residency.loader import ModelLoader
from worker.residency.progress import LoadProgress, ProgressPublisher


async def test_a_refused_model_file_names_neither_path_nor_library_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_dir = tmp_path / "secret-volume"
    secret_dir.mkdir()
    bad = secret_dir / "weights.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)  # the magic, then garbage
    settings = WorkerSettings(artifacts=ArtifactSettings(cache_dir=tmp_path / "cache"))
    loader = ModelLoader(settings, ArtifactStore(settings.artifacts), available_engines())
    spec = ModelSpec("broken@1", bad, context_length=256, threads=1)
    notifier = ChangeNotifier()
    progress = ProgressPublisher(LoadProgress(), notifier)
    with caplog.at_level(logging.WARNING), pytest.raises(FailedPrecondition) as refused:
        await loader.open(common_pb2.ENGINE_LLAMA_CPP, spec, SequenceCounters(notifier), progress)
    err = refused.value
    assert err.reason == "ARTIFACT_CORRUPT"
    assert "broken@1" in err.message and "llama_cpp" in err.message
    assert "secret-volume" not in err.message and "weights.gguf" not in err.message
    assert not err.metadata
    assert "Error" not in err.message and "llama" not in err.message.replace("llama_cpp", "")
    assert any("secret-volume" in r.getMessage() for r in caplog.records)  # the operator's copy
