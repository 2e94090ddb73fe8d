"""GGUF -> Hugging Face checkpoint, once per GGUF, for engines that cannot read GGUF (vLLM).

transformers dequantizes the GGUF (`from_pretrained(dir, gguf_file=...)`); we save it
as bf16 safetensors with its tokenizer. The result is cached under
``<artifact cache>/converted/<gguf sha256>/`` and placed by one directory rename, so a
crash mid-conversion never leaves a half checkpoint behind. The conversion runs in a
child process (`python -m worker.engines.hf_convert GGUF OUT`): its ~1 GB of
transient memory goes back to the OS, and the worker's RSS accounting stays honest.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from modelyard.digest import is_sha256, sha256_file
from modelyard.errors import FailedPrecondition
from worker.artifacts import ArtifactSettings
from worker.artifacts import files as artifact_files

log = logging.getLogger(__name__)

_locks: dict[str, asyncio.Lock] = {}


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == artifact_files.GGUF_MAGIC


def converted_root(cache_dir: Path | None = None) -> Path:
    """Where converted checkpoints live: beside the artifact cache (default location if None)."""
    base = cache_dir if cache_dir is not None else ArtifactSettings().cache_dir
    return base.expanduser() / "converted"


async def hf_checkpoint(gguf: Path, *, sha256: str = "", root: Path | None = None) -> Path:
    """The HF checkpoint directory for `gguf`, converting it on first use (~30 s for 135M).

    The directory is named by the GGUF's digest: `sha256` when it is one (the verified
    artifact's), else the file's own; never any other text, which could name a path."""
    given = sha256.strip().lower()
    digest = given if is_sha256(given) else await asyncio.to_thread(sha256_file, gguf)
    root = root if root is not None else converted_root()
    final = root / digest
    async with _locks.setdefault(digest, asyncio.Lock()):  # one conversion per GGUF per process
        if (final / "config.json").is_file():
            return final
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=root))
        try:
            out = work / "ckpt"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker.engines.hf_convert",
                str(gguf),
                str(out),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
                raise FailedPrecondition(
                    f"cannot convert {gguf.name} to a Hugging Face checkpoint: " + " | ".join(tail),
                    reason="ARTIFACT_CONVERSION_FAILED",
                    metadata={"path": str(gguf)},
                )
            if not final.exists():  # another process may have won the race: keep theirs
                out.rename(final)
            log.info("converted %s to %s", gguf.name, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def convert(gguf: Path, out: Path) -> None:
    """Blocking conversion (the child process's body)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # The GGUF quantizer would make save_pretrained write quantized weights back.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
