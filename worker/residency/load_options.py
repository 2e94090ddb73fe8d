"""A model's load options as the `ModelSpec.extra` strings engines read.

Engines read what they understand and ignore the rest, except vLLM, which refuses a
key that is neither its own (quantization, draft_model, draft_sha256,
num_speculative_tokens, sha256) nor an `AsyncEngineArgs` field: so only keys an
engine can use are added here, and the typed load options win over `extra`.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.v1 import common_pb2, model_pb2


def engine_extra(
    model: model_pb2.Model,
    kind: common_pb2.Engine.ValueType,
    *,
    draft: Path | None = None,
    draft_sha256: str = "",
) -> dict[str, str]:
    """`load_options.extra` passed through, plus the typed options for engine `kind`."""
    options = model.load_options
    extra = dict(options.extra)
    if options.quantization:
        extra["quantization"] = options.quantization
    if model.artifact.sha256:
        # vLLM caches its GGUF -> HF conversion by the GGUF's sha256 (no re-hash per load).
        extra["sha256"] = model.artifact.sha256
    if draft is not None:
        extra["draft_model"] = str(draft)
        if draft_sha256:
            extra["draft_sha256"] = draft_sha256
    if kind == common_pb2.ENGINE_LLAMA_CPP and options.gpu_layers and "n_gpu_layers" not in extra:
        extra["n_gpu_layers"] = str(options.gpu_layers)
    return extra


def is_artifact_uri(ref: str) -> bool:
    """A draft model named by where its weights are (a URI or an absolute path)."""
    return "://" in ref or ref.startswith("/")
