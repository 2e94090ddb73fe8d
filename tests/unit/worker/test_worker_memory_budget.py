"""The default memory budget: a share of MemTotal on CPU, of the GPU's memory with vLLM on CUDA."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.v1 import common_pb2
from worker.config import WorkerSettings
from worker.engines.llama_cpp import LlamaCppEngine
from worker.main import build_manager
from worker.residency import memory

GiB = 1 << 30


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    memory.cuda_memory.cache_clear()
    yield
    memory.cuda_memory.cache_clear()


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nvidia-smi that reports two 80 GiB GPUs (in MiB), the second one busier; no torch."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '81920, 81000'\necho '81920, 20480'\n")
    smi.chmod(0o755)
    monkeypatch.setattr("shutil.which", lambda name: str(smi))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: None if name == "torch" else real_find_spec(name, *args),
    )


@pytest.mark.usefixtures("fake_smi")
def test_on_cuda_the_budget_is_a_share_of_the_gpu_capped_by_what_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert memory.cuda_memory() == (80 * GiB, 81000 << 20)
    assert memory.default_budget_bytes(0.7, gpu=True) == int(80 * GiB * 0.7)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    memory.cuda_memory.cache_clear()
    assert memory.default_budget_bytes(0.7, gpu=True) == 20 * GiB  # only 20 GiB free
    assert memory.default_budget_bytes(0.7) == int(memory.physical_memory_bytes() * 0.7)


@pytest.mark.usefixtures("fake_smi")
def test_the_manager_takes_the_gpu_budget_only_when_it_runs_vllm(settings: WorkerSettings) -> None:
    def llama(counters: object) -> LlamaCppEngine:
        return LlamaCppEngine()

    cpu = build_manager(settings, engines={common_pb2.ENGINE_LLAMA_CPP: llama})
    gpu = build_manager(settings, engines={common_pb2.ENGINE_VLLM: llama})
    assert cpu.budget_bytes == int(memory.physical_memory_bytes() * 0.7)
    assert gpu.budget_bytes == int(80 * GiB * 0.7)


def test_without_a_gpu_the_budget_is_a_share_of_physical_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(memory, "Path", lambda p: Path("/nonexistent/nvidiactl"))
    assert memory.cuda_memory() is None
    assert memory.default_budget_bytes(0.7, gpu=True) == int(memory.physical_memory_bytes() * 0.7)
