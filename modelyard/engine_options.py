"""Which `load_options.extra` keys each engine accepts: one list, shared by the registry
(which refuses other keys at registration) and the workers (which drop them).

`extra` reaches engine constructors (vLLM's AsyncEngineArgs, llama.cpp's model
parameters, torch dtypes): a free-form key there could name another checkpoint,
run code shipped with a model (trust_remote_code), or write somewhere else
(download_dir). So each engine lists the tuning knobs it reads and nothing that
chooses files, code or where they go; an operator may widen a worker's list
(MODELYARD_WORKER_ALLOWED_ENGINE_OPTIONS) for their own fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from modelyard.v1 import common_pb2

EngineKind: TypeAlias = common_pb2.Engine.ValueType

ALLOWED: Mapping[EngineKind, frozenset[str]] = {
    # worker/engines/llama_cpp.py reads these four.
    common_pb2.ENGINE_LLAMA_CPP: frozenset(
        {"n_gpu_layers", "flash_attn", "kv_unified", "prefix_cache_replies"}
    ),
    # worker/engines/transformers.py: the torch device and dtype.
    common_pb2.ENGINE_TRANSFORMERS: frozenset({"device", "dtype"}),
    # worker/engines/vllm.py: its own keys, then AsyncEngineArgs fields that tune memory,
    # batching and numerics. Never model/tokenizer/revision/download_dir/load_format/
    # hf_* /trust_remote_code/speculative_config (a path), nor max_num_seqs/max_model_len
    # (the worker's own caps decide those).
    common_pb2.ENGINE_VLLM: frozenset(
        {
            "quantization",
            "num_speculative_tokens",
            "gpu_memory_utilization",
            "kv_cache_dtype",
            "max_num_batched_tokens",
            "enable_prefix_caching",
            "enable_chunked_prefill",
            "block_size",
            "swap_space",
            "cpu_offload_gb",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "dtype",
            "seed",
            "enforce_eager",
            "disable_sliding_window",
            "max_logprobs",
        }
    ),
    # worker/engines/sim_options.py: the simulated engine's latency model (tests, benches).
    common_pb2.ENGINE_SIM: frozenset(
        {
            "sim_prefill_ms_per_token",
            "sim_decode_ms_per_token",
            "sim_batch_slowdown",
            "sim_max_sequences",
            "sim_load_ms",
            "sim_vocab_size",
            "sim_context_length",
            "sim_memory_bytes",
            "sim_embedding_dimensions",
            "sim_eos_probability",
        }
    ),
}


def _flag(value: str) -> str | None:
    return None if value in ("0", "1") else "'0' or '1'"


def _integer(value: str) -> str | None:
    try:
        int(value)
    except ValueError:
        return "an integer"
    return None


# What the engines can read of a key's value (worker/engines/llama_cpp.py parses these):
# checked at registration, so no version is stored that no worker could load.
VALUES: Mapping[EngineKind, Mapping[str, Callable[[str], str | None]]] = {
    common_pb2.ENGINE_LLAMA_CPP: {
        "flash_attn": _flag,
        "kv_unified": _flag,
        "prefix_cache_replies": _flag,
        "n_gpu_layers": _integer,
    },
}

# Keys the worker itself fills in from validated fields (never taken from `extra`).
RESERVED = frozenset({"sha256", "draft_model", "draft_sha256"})


def allowed_for(engines: Iterable[EngineKind], extended: Iterable[str] = ()) -> frozenset[str]:
    """The keys any of `engines` accepts (every engine's when none is named), plus `extended`."""
    kinds = [e for e in engines if e in ALLOWED] or list(ALLOWED)
    keys: set[str] = set(extended)
    for kind in kinds:
        keys |= ALLOWED[kind]
    return frozenset(keys - RESERVED)


def refused_keys(
    extra: Iterable[str], engines: Iterable[EngineKind], extended: Iterable[str] = ()
) -> list[str]:
    """The keys of `extra` none of `engines` accepts, sorted."""
    allowed = allowed_for(engines, extended)
    return sorted(k for k in extra if k not in allowed)


def unreadable_values(
    extra: Mapping[str, str], engines: Iterable[EngineKind]
) -> list[tuple[str, str]]:
    """(key, why) for each value of `extra` that one of `engines` (every engine when none
    is named) reads and could not parse, sorted by key; the registry refuses these at
    registration and the engine at load, with the same words."""
    kinds = [e for e in engines if e in ALLOWED] or list(ALLOWED)
    out: dict[str, str] = {}
    for kind in kinds:
        for key, rule in VALUES.get(kind, {}).items():
            if key in extra and key not in out:
                wanted = rule(extra[key])
                if wanted is not None:
                    out[key] = f"{key} is {wanted}, not {extra[key][:32]!r}"
    return sorted(out.items())
