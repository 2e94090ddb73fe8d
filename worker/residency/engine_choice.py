"""Which of this worker's engines loads a model: the request's, else the model's first allowed."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeAlias

from modelyard.errors import FailedPrecondition
from modelyard.refs import key_of
from modelyard.v1 import common_pb2, model_pb2

EngineKind: TypeAlias = common_pb2.Engine.ValueType


def pick_engine(
    model: model_pb2.Model, requested: EngineKind, engines: Collection[EngineKind]
) -> EngineKind:
    """The engine to load `model` with; FAILED_PRECONDITION saying why none can."""
    key = key_of(model)
    runs = ", ".join(common_pb2.Engine.Name(e) for e in engines)
    if model.artifact.format == model_pb2.ARTIFACT_FORMAT_HF and not any(
        e != common_pb2.ENGINE_LLAMA_CPP for e in engines
    ):
        # llama.cpp reads only GGUF; vLLM/transformers engines read HF checkpoints.
        raise FailedPrecondition(
            f"model {key} is a Hugging Face checkpoint; this worker runs only {runs}, "
            "which reads GGUF"
        )
    if requested != common_pb2.ENGINE_UNSPECIFIED:
        name = common_pb2.Engine.Name(requested)
        if model.engines and requested not in model.engines:
            raise FailedPrecondition(f"engine {name} is not allowed for {key}")
        if requested not in engines:
            raise FailedPrecondition(f"this worker does not run {name}; it runs {runs}")
        return requested
    for kind in model.engines or engines:
        if kind in engines:
            return kind
    raise FailedPrecondition(
        f"none of the engines allowed for {key} runs on this worker; it runs {runs}"
    )
