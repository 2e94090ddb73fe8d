"""A generation stream's shape as a client may rely on it: the router and worker merge
deltas that wait on a slow reader (modelyard.streaming.CoalescingWriter), so how many
deltas carry the tokens is not part of the contract; their order and content are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def shape(events: Sequence[Any]) -> list[str | None]:
    """Event kinds with each run of deltas as one "delta"."""
    out: list[str | None] = []
    for event in events:
        kind = event.WhichOneof("event")
        if not (kind == "delta" and out and out[-1] == "delta"):
            out.append(kind)
    return out


def token_ids(events: Sequence[Any]) -> list[int]:
    return [t for e in events if e.WhichOneof("event") == "delta" for t in e.delta.token_ids]
