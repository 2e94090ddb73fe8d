"""What an engine's prefix cache tells the worker's status, in the mesh's hashing scheme.

Engines that keep the KV of finished requests describe what they hold as a
`PrefixSummary`: the link hashes (modelyard/prefix.py) of the prefixes they hold,
most recently used first and capped, so a router can send a request where its
prefix already is. The prompt-token totals (the hit rate) live in the model's
`SequenceCounters`, which every engine keeps, cache or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modelyard.prefix import SCHEME, PrefixChain, chain_of_messages, chain_of_request
from worker.engines.base import ChatTurn, EngineRequest, FinishReason

# worker.proto caps PrefixCacheSummary.link_hashes at 512 per model: ~4.6 KB of status.
MAX_SUMMARY_LINKS = 512
_NO_CHAIN = PrefixChain((), ())
# Finishes after which the streamed reply is the whole reply a client sends back next turn.
_COMPLETE = frozenset({FinishReason.STOP, FinishReason.STOP_SEQUENCE, FinishReason.LENGTH})


@dataclass(frozen=True, slots=True)
class PrefixSummary:
    """A model's prefix cache now: link hashes MRU first, and its size in KV cells (tokens)."""

    link_hashes: tuple[int, ...]
    cached_tokens: int
    cached_tokens_limit: int
    scheme: str = SCHEME


@runtime_checkable
class PrefixCacheHolder(Protocol):
    """An engine that keeps finished requests' prefixes (the status reads this)."""

    def prefix_summary(self) -> PrefixSummary | None:
        """None while no model is loaded or the cache is off."""
        ...


@runtime_checkable
class PrefixCacheResizer(Protocol):
    """An engine whose prefix cache the worker may shrink and grow back (memory pressure)."""

    def set_prefix_cache_limit(self, tokens: int) -> None:
        """Hold at most `tokens` of cached prefixes from now on; thread-safe."""
        ...


def request_chain(req: EngineRequest) -> PrefixChain:
    """The request's chain; empty for token ids (a router cannot hash what it never sees)."""
    if req.prompt_token_ids is not None:
        return _NO_CHAIN
    return chain_of_request(req.prompt, req.messages)


def finished_chains(
    req: EngineRequest, reply: str, reason: FinishReason, *, with_reply: bool = True
) -> list[PrefixChain]:
    """The chains a finished request's KV holds: its own, and for a chat whose reply's KV
    is kept (`with_reply`) the chain with the assistant's reply as one more message (the
    next turn of the conversation starts so)."""
    chains = [request_chain(req)]
    if with_reply and req.messages and req.prompt_token_ids is None and reason in _COMPLETE:
        chains.append(chain_of_messages([*req.messages, ChatTurn("assistant", reply)]))
    return [c for c in chains if c.hashes]


def summary_links(
    chains_mru: Iterable[Sequence[int]], cap: int = MAX_SUMMARY_LINKS
) -> tuple[int, ...]:
    """Link hashes of held chains, most recently used chain first and its longest link first,
    without repeats, at most `cap`."""
    seen: dict[int, None] = {}
    for hashes in chains_mru:
        for h in reversed(hashes):
            seen.setdefault(h, None)
            if len(seen) >= cap:
                return tuple(seen)
    return tuple(seen)
