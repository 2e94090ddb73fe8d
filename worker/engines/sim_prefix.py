"""The simulated engine's prefix cache: which request prefixes its "KV" would still hold.

A model of the llama.cpp engine's cache at the level the router sees: finished
requests leave their prefix chains (modelyard/prefix.py; a chat also the chain
with the reply appended) in an LRU bounded by tokens, the prompt plus reply of
each request as a real KV cache would hold them. A new request is served from the
longest leading part of its chain the cache holds, and the sim charges prefill
only for the rest (the engine turns the held bytes into its own tokens).
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

from modelyard.prefix import PrefixChain
from worker.engines.prefix_summary import PrefixSummary, summary_links


@dataclass(frozen=True, slots=True)
class _Entry:
    chains: tuple[tuple[int, ...], ...]  # longest last
    links: frozenset[int]
    tokens: int


class SimPrefixCache:
    def __init__(self, limit_tokens: int) -> None:
        self.limit_tokens = limit_tokens
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # MRU last
        self._held: collections.Counter[int] = collections.Counter()
        self._tokens = 0
        self._ids = itertools.count()

    def lookup(self, chain: PrefixChain) -> tuple[int, int]:
        """(links, bytes) of the chain's longest held prefix; its entries become most recent."""
        links, held_bytes = chain.held(self._held)
        if links:
            hit = chain.hashes[links - 1]
            for key in [k for k, e in self._entries.items() if hit in e.links]:
                self._entries.move_to_end(key)
        return links, held_bytes

    def add(self, chains: list[PrefixChain], tokens: int) -> None:
        """A finished request's chains and the tokens its KV holds (prompt and reply)."""
        if not chains or tokens > self.limit_tokens:
            return
        hashes = tuple(c.hashes for c in sorted(chains, key=lambda c: len(c.hashes)))
        # The same request again replaces its entry instead of holding the prefix twice.
        for key in [k for k, e in self._entries.items() if e.chains == hashes]:
            self._drop(key)
        entry = _Entry(hashes, frozenset(h for c in hashes for h in c), tokens)
        self._entries[next(self._ids)] = entry
        self._held.update(entry.links)
        self._tokens += tokens
        while self._tokens > self.limit_tokens:
            self._drop(next(iter(self._entries)))

    def summary(self) -> PrefixSummary:
        newest_first = (c for e in reversed(self._entries.values()) for c in reversed(e.chains))
        return PrefixSummary(summary_links(newest_first), self._tokens, self.limit_tokens)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        for h in entry.links:
            self._held[h] -= 1
            if not self._held[h]:
                del self._held[h]
        self._tokens -= entry.tokens
