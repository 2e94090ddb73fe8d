"""Which device a worker reports: a CUDA device counts for every engine that holds its
models there (vLLM, and transformers, which takes CUDA whenever torch sees it). The
CUDA probe is replaced: these machines have no GPU."""

from __future__ import annotations

import sys

import pytest

from modelyard.v1 import common_pb2
from worker import status


@pytest.mark.parametrize(
    ("engines", "device"),
    [
        ({common_pb2.ENGINE_VLLM}, "cuda"),
        ({common_pb2.ENGINE_TRANSFORMERS}, "cuda"),
        ({common_pb2.ENGINE_LLAMA_CPP, common_pb2.ENGINE_TRANSFORMERS}, "cuda"),
        ({common_pb2.ENGINE_LLAMA_CPP}, "cpu"),  # this llama.cpp build runs on the CPU
    ],
)
def test_a_cuda_device_counts_for_cuda_engines(
    monkeypatch: pytest.MonkeyPatch, engines: set[common_pb2.Engine.ValueType], device: str
) -> None:
    monkeypatch.setattr(status, "cuda_memory", lambda: (80 << 30, 79 << 30))
    monkeypatch.setattr(status, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(sys, "platform", "linux")
    assert status.detect_device(engines)[0] == device


def test_without_a_cuda_device_it_is_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "cuda_memory", lambda: None)
    monkeypatch.setattr(sys, "platform", "linux")
    assert status.detect_device({common_pb2.ENGINE_TRANSFORMERS})[0] == "cpu"
