"""The simulated engine's knobs: names, defaults and checks of its `load_options.extra` keys.

Every value is a string in the registry (`load_options.extra`), parsed and checked
once at load: a bad value fails the load with INVALID_ARGUMENT naming the key.
Unknown `sim_*` keys fail too, so a typo never silently runs the default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from modelyard.errors import InvalidArgument

PREFIX = "sim_"
MAX_VOCAB = 1 << 20  # word texts are built at load: keep that to milliseconds


@dataclass(frozen=True)
class SimOptions:
    """The latency model, vocabulary and footprint of one simulated model."""

    # Prompt evaluation: ms per prompt token, paid in the step a sequence joins.
    prefill_ms_per_token: float = 0.2
    # One decode step of a lone sequence (one token for it).
    decode_ms_per_token: float = 20.0
    # A step with n sequences takes decode_ms_per_token * (1 + batch_slowdown * (n - 1)).
    batch_slowdown: float = 0.05
    # Sequences decoded together; 0: the model's max_parallel_sequences, else sim's default.
    max_sequences: int = 0
    load_ms: float = 0.0
    vocab_size: int = 8192
    # Context window; 0: the worker's (load options, capped by its setting); else the smaller.
    context_length: int = 0
    # What the worker accounts for the model; 0: resources.memory_bytes, else the file estimate.
    memory_bytes: int = 0
    # Chance, per token, of the end-of-sequence token (drawn from the sequence's seeded RNG).
    eos_probability: float = 0.01
    # Length of the vectors Embed returns (a model whose capabilities say embedding).
    embedding_dimensions: int = 32


# The `load_options.extra` keys and their defaults, as the registry holds them (strings).
SIM_OPTIONS: Mapping[str, str] = {
    PREFIX + f.name: str(f.default) for f in dataclasses.fields(SimOptions)
}

_MINIMUM: Mapping[str, float] = {"vocab_size": 16, "embedding_dimensions": 1}
_MAXIMUM: Mapping[str, float] = {
    "vocab_size": MAX_VOCAB,
    "eos_probability": 1.0,
    "embedding_dimensions": 8192,
}


def parse_options(extra: Mapping[str, str]) -> SimOptions:
    """The options in `extra` over the defaults; INVALID_ARGUMENT for a bad or unknown one."""
    values: dict[str, int | float] = {}
    for key, text in extra.items():
        if not key.startswith(PREFIX):
            continue  # another consumer's key (sha256, ...)
        if key not in SIM_OPTIONS:
            known = ", ".join(SIM_OPTIONS)
            raise InvalidArgument.for_field(
                f"load_options.extra.{key}", f"not an option of the sim engine ({known})"
            )
        name = key.removeprefix(PREFIX)
        values[name] = _number(key, text, integer=isinstance(getattr(SimOptions, name), int))
        _check_range(key, name, values[name])
    return SimOptions(**values)  # type: ignore[arg-type]


def sim_memory_bytes(extra: Mapping[str, str]) -> int:
    """`sim_memory_bytes` from a model's extra (0 when unset); INVALID_ARGUMENT when bad."""
    key = PREFIX + "memory_bytes"
    if key not in extra:
        return 0
    value = int(_number(key, extra[key], integer=True))
    _check_range(key, "memory_bytes", value)
    return value


def _number(key: str, text: str, *, integer: bool) -> int | float:
    try:
        value: int | float = int(text.strip()) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidArgument.for_field(
            f"load_options.extra.{key}", f"{text!r} is not {kind}"
        ) from None
    if not math.isfinite(value):
        raise InvalidArgument.for_field(f"load_options.extra.{key}", f"{text!r} is not finite")
    return value


def _check_range(key: str, name: str, value: float) -> None:
    low, high = _MINIMUM.get(name, 0), _MAXIMUM.get(name, math.inf)
    if not low <= value <= high:
        bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise InvalidArgument.for_field(
            f"load_options.extra.{key}", f"{value:g} is out of range: must be {bounds}"
        )
