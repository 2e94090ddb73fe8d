"""How much memory a model needs, how much the worker may use, and how much it uses.

The estimate is taken before a load so the manager can refuse or evict first:
weights (the file size: GGUF tensors are mapped as stored) + the KV cache for the
configured context (2 x layers x context x KV heads x head size x 2 bytes, f16; the
cache is unified, so all parallel sequences share those cells) + a fixed overhead
for compute buffers and logits. After the load the manager replaces it with the
measured growth of the process's resident set (see `rss_bytes`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.v1 import common_pb2

log = logging.getLogger(__name__)

KV_BYTES_PER_VALUE = 2  # f16 K and V caches, llama.cpp's default
OVERHEAD_BYTES = 64 << 20  # compute buffers, logits, allocator slack
DEFAULT_BUDGET_FRACTION = 0.7
# Used when the file is not a GGUF (a Hugging Face checkpoint): weights times this.
NON_GGUF_FACTOR = 1.3


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on, read from GGUF metadata."""

    n_layer: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int

    def kv_cache_bytes(self, context_length: int) -> int:
        per_cell = self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v)
        return per_cell * context_length * KV_BYTES_PER_VALUE


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    kv_cache_bytes: int  # the context's cells
    overhead_bytes: int
    prefix_token_bytes: int = 0  # KV of one token of cached prefixes (host memory)
    prefix_tokens: int = 0

    @property
    def total(self) -> int:
        prefixes = self.prefix_token_bytes * self.prefix_tokens
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes + prefixes


def rss_bytes() -> int:
    """Resident set of this process (Linux /proc; 0 elsewhere, so the estimate stands).

    Counts the GGUF pages llama.cpp has mapped and touched (the warm-up touches them
    all) plus its KV cache and buffers: what the model really costs this process.
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim_heap() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise): an unload shows in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def physical_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


# Engines that hold their models on a CUDA device when there is one (transformers takes
# one whenever torch sees it).
GPU_ENGINES = frozenset({common_pb2.ENGINE_VLLM, common_pb2.ENGINE_TRANSFORMERS})


def default_budget_bytes(fraction: float = DEFAULT_BUDGET_FRACTION, *, gpu: bool = False) -> int:
    """A share of physical memory; with `gpu` (a CUDA engine configured) of the CUDA
    device's, if any.

    On a GPU the share is of the device's total memory, capped by what is free at start
    (another process may hold part of it). No CUDA device found: physical memory.
    """
    if gpu and (device := cuda_memory()) is not None:
        total, free = device
        budget = min(int(total * fraction), free)
        log.info(
            "memory budget %d MiB: %.0f%% of the GPU's %d MiB (%d MiB free)",
            budget >> 20,
            fraction * 100,
            total >> 20,
            free >> 20,
        )
        return budget
    return int(physical_memory_bytes() * fraction)


_TORCH_MEM_GET_INFO = (
    "import torch\n"
    "if torch.cuda.is_available():\n"
    "    free, total = torch.cuda.mem_get_info()\n"
    "    print(total, free)\n"
)


@functools.lru_cache(maxsize=1)
def cuda_memory() -> tuple[int, int] | None:
    """(total, free) bytes of the first visible CUDA device, or None without one.

    torch.cuda.mem_get_info when torch is installed, else nvidia-smi. torch runs in a
    child process: a CUDA context created in the worker itself would break vLLM, which
    forks its engine processes (CUDA cannot be re-initialized in a forked child).
    """
    smi = shutil.which("nvidia-smi")
    if sys.platform == "linux" and smi is None and not Path("/dev/nvidiactl").exists():
        return None  # no driver: skip the seconds a torch import costs
    if importlib.util.find_spec("torch") is not None:
        out = _run([sys.executable, "-c", _TORCH_MEM_GET_INFO])
        if out is not None:
            return _two_ints(out, scale=1)
    if smi is None:
        return None
    out = _run([smi, "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits"])
    if out is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    lines = out.splitlines()
    index = int(visible) if visible.isdigit() and int(visible) < len(lines) else 0
    return _two_ints(lines[index] if lines else "", scale=1 << 20)  # nvidia-smi says MiB


@functools.lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """The first CUDA device's name from nvidia-smi, or None."""
    smi = shutil.which("nvidia-smi")
    out = _run([smi, "--query-gpu=name", "--format=csv,noheader"]) if smi else None
    return out.splitlines()[0].strip() if out else None


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("%s failed: %s", argv[0], err)
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _two_ints(text: str, *, scale: int) -> tuple[int, int] | None:
    numbers = re.findall(r"\d+", text)
    if len(numbers) < 2:
        return None
    return int(numbers[0]) * scale, int(numbers[1]) * scale


def _int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta.get(key, "0"))
    except ValueError:  # per-layer arrays: llama.cpp prints them as "[..]"; take the largest
        numbers = [int(n) for n in re.findall(r"\d+", meta[key])]
        return max(numbers, default=0)


def read_shape(path: Path) -> ModelShape | None:
    """The model's shape from its GGUF header (cached per file and mtime), or None."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_shape(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read_shape(path: str, mtime_ns: int, size: int) -> ModelShape | None:
    """The model's shape from its GGUF header, or None when it cannot be read.

    Read by llama.cpp with vocab_only (milliseconds); the `gguf` package's reader
    parses the whole vocabulary in Python and takes 10-40 s on these models.
    """
    del mtime_ns, size  # only the cache key: a rewritten file is read again
    try:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model: Any = LlamaModel(path_model=path, params=params, verbose=False)
        try:
            meta, n_vocab = model.metadata(), model.n_vocab()
        finally:
            model.close()
    except Exception as err:  # a corrupt header is the engine's error to report
        log.debug("cannot read the GGUF header of %s: %s", path, err)
        return None
    arch = meta.get("general.architecture", "")
    n_layer = _int(meta, f"{arch}.block_count")
    n_head = _int(meta, f"{arch}.attention.head_count")
    n_embd = _int(meta, f"{arch}.embedding_length")
    if not (n_layer and n_head and n_embd):
        return None
    head_k = _int(meta, f"{arch}.attention.key_length") or n_embd // n_head
    return ModelShape(
        n_layer=n_layer,
        n_head_kv=_int(meta, f"{arch}.attention.head_count_kv") or n_head,
        head_dim_k=head_k,
        head_dim_v=_int(meta, f"{arch}.attention.value_length") or head_k,
        n_ctx_train=_int(meta, f"{arch}.context_length"),
        n_vocab=int(n_vocab),
    )


def path_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def estimate(path: Path, context_length: int, cached_tokens: int = 0) -> Estimate:
    """Blocking (reads the header): the memory a model at `path` will take once loaded,
    `cached_tokens` of KV kept in host memory as prefixes (llama.cpp) included."""
    weights = path_bytes(path)
    shape = read_shape(path) if path.is_file() else None
    if shape is None:
        extra = int(weights * (NON_GGUF_FACTOR - 1))
        return Estimate(weights, 0, extra)
    logits = shape.n_vocab * 4 * 8  # f32 logits for a few output rows
    kv = shape.kv_cache_bytes(context_length)
    return Estimate(weights, kv, OVERHEAD_BYTES + logits, shape.kv_cache_bytes(1), cached_tokens)
