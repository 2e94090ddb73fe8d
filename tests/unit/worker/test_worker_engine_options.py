"""What of a model's load options reaches an engine: the engine's allow-listed keys, the
worker's own caps, and cache directory names from validated digests only."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelyard.digest import sha256_file
from modelyard.v1 import common_pb2, model_pb2
from tests.fixtures.tiny_gguf import gguf_model
from worker.artifacts import ArtifactStore
from worker.config import MAX_PARALLEL_SEQUENCES, WorkerSettings
from worker.engines import hf_convert
from worker.engines.base import LoadedInfo
from worker.main import build_manager
from worker.residency.load_options import engine_extra
from worker.residency.loader import Fetched, ModelLoader

SHA = "ab" * 32


def vllm_model(**extra: str) -> model_pb2.Model:
    model = model_pb2.Model(name="m", version="1", engines=[common_pb2.ENGINE_VLLM])
    model.artifact.sha256 = SHA
    model.load_options.extra.update(extra)
    return model


def test_vllm_options_that_choose_code_or_files_are_dropped() -> None:
    model = vllm_model(
        trust_remote_code="true",
        model="/elsewhere",
        download_dir="/tmp/x",
        tokenizer="/elsewhere",
        max_num_seqs="4096",
        gpu_memory_utilization="0.5",
    )
    options = engine_extra(model, common_pb2.ENGINE_VLLM)
    assert options.extra == {"gpu_memory_utilization": "0.5", "sha256": SHA}
    assert options.dropped == [
        "download_dir",
        "max_num_seqs",
        "model",
        "tokenizer",
        "trust_remote_code",
    ]


def test_a_sha256_in_extra_is_ignored_and_the_artifacts_is_used() -> None:
    model = vllm_model(sha256="../../e")
    assert engine_extra(model, common_pb2.ENGINE_VLLM).extra == {"sha256": SHA}
    model.artifact.sha256 = ""  # an unverifiable artifact: no digest is made up
    assert "sha256" not in engine_extra(model, common_pb2.ENGINE_VLLM).extra


def test_the_worker_may_widen_an_engines_list() -> None:
    model = vllm_model(max_num_seqs="64", sha256="../../e")
    options = engine_extra(model, common_pb2.ENGINE_VLLM, extended=["max_num_seqs", "sha256"])
    assert options.extra == {"max_num_seqs": "64", "sha256": SHA}  # sha256 stays the worker's


def test_allowed_engine_options_reads_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_WORKER_ALLOWED_ENGINE_OPTIONS", "max_num_seqs, block_size")
    assert WorkerSettings().allowed_engine_options == ["max_num_seqs", "block_size"]


def test_the_loader_drops_disallowed_keys_with_a_warning(
    settings: WorkerSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loader = ModelLoader(settings, ArtifactStore(settings.artifacts), {})
    model = vllm_model(trust_remote_code="true", gpu_memory_utilization="0.5")
    with caplog.at_level(logging.WARNING):
        spec = loader.spec("m@1", model, common_pb2.ENGINE_VLLM, Fetched([tmp_path / "m"]))  # type: ignore[arg-type]
    assert "trust_remote_code" not in spec.extra
    assert spec.extra["gpu_memory_utilization"] == "0.5"
    assert "trust_remote_code" in caplog.text


def test_max_parallel_sequences_is_capped_by_the_worker(settings: WorkerSettings) -> None:
    capped = settings.model_copy(update={"max_parallel_sequences": 4})
    loader = ModelLoader(capped, ArtifactStore(settings.artifacts), {})
    model = vllm_model()
    model.load_options.max_parallel_sequences = 10_000
    assert loader.parallel(model) == 4
    model.load_options.max_parallel_sequences = 1
    assert loader.parallel(model) == 1


def test_without_caps_the_engine_decides_within_the_hard_bound(settings: WorkerSettings) -> None:
    assert settings.max_parallel_sequences == 0  # the default: no worker cap
    loader = ModelLoader(settings, ArtifactStore(settings.artifacts), {})
    model = vllm_model()
    assert loader.parallel(model) == 0  # the engine's own default
    batches = LoadedInfo("vllm", 2048, 100, True, max_sequences=32)
    assert loader.slots(model, batches) == 32
    model.load_options.max_parallel_sequences = 10_000
    assert loader.parallel(model) == MAX_PARALLEL_SEQUENCES
    model.load_options.max_parallel_sequences = 6
    assert loader.slots(model, batches) == 6


async def test_the_conversion_directory_is_named_by_the_files_digest_never_by_extra(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = sha256_file(tiny_gguf)
    root = tmp_path / "cache" / "converted"
    (root / digest).mkdir(parents=True)
    (root / digest / "config.json").write_text("{}")

    async def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"converted into a new directory: {args}")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_conversion)
    found = await hf_convert.hf_checkpoint(tiny_gguf, sha256="../../e", root=root)
    assert found == root / digest
    assert not (tmp_path / "e").exists()


async def test_the_manager_keeps_a_versions_first_record(
    settings: WorkerSettings, tiny_gguf: Path, tmp_path: Path
) -> None:
    manager = build_manager(settings)
    first = gguf_model(tiny_gguf)
    await manager.load(first)
    await manager.unload(manager.residents()[0].key)
    other = tmp_path / "other.gguf"
    shutil.copyfile(tiny_gguf, other)
    copy = gguf_model(other)  # same name@version, another artifact

    await manager.load(copy)

    (resident,) = manager.residents()
    assert resident.model.artifact.uri == first.artifact.uri
    await manager.close()
