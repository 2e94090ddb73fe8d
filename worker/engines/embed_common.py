"""What every engine's embed shares: pooling per-token states, the length check, refusals."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.errors import FailedPrecondition, InvalidArgument
from worker.engines.base import Pooling


def not_embedding_model(key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"model {key} is not an embedding model (its capabilities do not include embedding)",
        reason="NOT_AN_EMBEDDING_MODEL",
        metadata={"model": key},
    )


def embedding_only(key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"model {key} is an embedding model: it cannot generate text",
        reason="EMBEDDING_MODEL",
        metadata={"model": key},
    )


def fit_tokens(index: int, tokens: Sequence[int], limit: int, *, truncate: bool) -> list[int]:
    """The input's tokens within `limit`: cut when `truncate`, else INVALID_ARGUMENT naming it."""
    if len(tokens) <= limit:
        return list(tokens)
    if not truncate:
        raise InvalidArgument.for_field(
            f"inputs[{index}]",
            f"has {len(tokens)} tokens but the model reads at most {limit}; "
            "shorten it or set truncate",
        )
    return list(tokens[:limit])


def pool(states: Sequence[Sequence[float]], pooling: Pooling) -> list[float]:
    """One vector from per-token states (rows): mean, first (CLS) or last token."""
    if pooling is Pooling.CLS:
        return [float(x) for x in states[0]]
    if pooling is Pooling.LAST:
        return [float(x) for x in states[-1]]
    n = len(states)
    return [float(sum(column)) / n for column in zip(*states, strict=True)]
