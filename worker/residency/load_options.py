"""A model's load options as the `ModelSpec.extra` strings engines read.

Only keys the engine accepts pass (`modelyard.engine_options`, widened by the worker's
`allowed_engine_options`): `extra` reaches engine constructors, and a key there could
name other files or run other code. The worker's own keys (sha256, draft_model,
draft_sha256) come only from validated fields, never from `extra`; the typed load
options win over `extra`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from modelyard.digest import is_sha256
from modelyard.engine_options import allowed_for
from modelyard.v1 import common_pb2, model_pb2


class EngineExtra(NamedTuple):
    extra: dict[str, str]
    dropped: list[str]  # keys of load_options.extra the engine does not accept


def engine_extra(
    model: model_pb2.Model,
    kind: common_pb2.Engine.ValueType,
    *,
    draft: Path | None = None,
    draft_sha256: str = "",
    extended: Iterable[str] = (),
) -> EngineExtra:
    """The accepted `load_options.extra`, plus the typed options for engine `kind`."""
    options = model.load_options
    allowed = allowed_for([kind], extended)
    extra = {k: v for k, v in options.extra.items() if k in allowed}
    dropped = sorted(k for k in options.extra if k not in allowed)
    if options.quantization:
        extra["quantization"] = options.quantization
    if is_sha256(model.artifact.sha256):
        # vLLM caches its GGUF -> HF conversion by the GGUF's sha256 (no re-hash per load).
        extra["sha256"] = model.artifact.sha256
    if draft is not None:
        extra["draft_model"] = str(draft)
        if is_sha256(draft_sha256):
            extra["draft_sha256"] = draft_sha256
    if kind == common_pb2.ENGINE_LLAMA_CPP and options.gpu_layers and "n_gpu_layers" not in extra:
        extra["n_gpu_layers"] = str(options.gpu_layers)
    return EngineExtra(extra, dropped)


def is_artifact_uri(ref: str) -> bool:
    """A draft model named by where its weights are (a URI or an absolute path)."""
    return "://" in ref or ref.startswith("/")
