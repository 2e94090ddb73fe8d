"""Inference engines behind one protocol (see base.py), and which of them this install runs."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from modelyard.v1 import common_pb2
from worker.engines.base import (
    ChatTurn,
    Engine,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
    Piece,
    SamplingConfig,
    Scheduled,
)

if TYPE_CHECKING:
    from worker.counters import SequenceCounters

EngineFactory = Callable[["SequenceCounters"], Engine]


def _installed(*modules: str) -> bool:
    # find_spec, not import: importing vllm or torch costs seconds at every worker start.
    return all(importlib.util.find_spec(m) is not None for m in modules)


def available_engines(*, sim: bool = False) -> Mapping[common_pb2.Engine.ValueType, EngineFactory]:
    """Factories for the engines whose libraries are installed, in preference order; the
    simulated engine last, and only when asked for (`sim`: tests, benches, drills)."""
    engines: dict[common_pb2.Engine.ValueType, EngineFactory] = {}
    if _installed("llama_cpp"):

        def llama_cpp(counters: SequenceCounters) -> Engine:
            from worker.engines.llama_cpp import LlamaCppEngine

            return LlamaCppEngine(counters)

        engines[common_pb2.ENGINE_LLAMA_CPP] = llama_cpp
    if _installed("vllm"):

        def vllm(counters: SequenceCounters) -> Engine:
            from worker.engines.vllm import VllmEngine

            return VllmEngine(counters)

        engines[common_pb2.ENGINE_VLLM] = vllm
    if _installed("torch", "transformers"):

        def transformers(counters: SequenceCounters) -> Engine:
            from worker.engines.transformers import TransformersEngine

            return TransformersEngine(counters)

        engines[common_pb2.ENGINE_TRANSFORMERS] = transformers
    if sim:

        def simulated(counters: SequenceCounters) -> Engine:
            from worker.engines.sim import SimEngine

            return SimEngine(counters)

        engines[common_pb2.ENGINE_SIM] = simulated
    return engines


__all__ = [
    "ChatTurn",
    "Engine",
    "EngineEvent",
    "EngineFactory",
    "EngineRequest",
    "FinishReason",
    "Finished",
    "LoadedInfo",
    "ModelSpec",
    "Piece",
    "SamplingConfig",
    "Scheduled",
    "available_engines",
]
