"""Inference engines behind one protocol (see base.py)."""

from worker.engines.base import (
    ChatTurn,
    Engine,
    EngineEvent,
    EngineRequest,
    EngineStats,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
    Piece,
    SamplingConfig,
    Scheduled,
)

__all__ = [
    "ChatTurn",
    "Engine",
    "EngineEvent",
    "EngineRequest",
    "EngineStats",
    "FinishReason",
    "Finished",
    "LoadedInfo",
    "ModelSpec",
    "Piece",
    "SamplingConfig",
    "Scheduled",
]
