"""Prefix reuse for the llama.cpp batched engine: finished sequences' KV kept as an LRU.

When a sequence finishes, its KV (the whole prompt and the reply tokens it fed) is
copied to a sequence id of the cache's own (`llama_memory_seq_cp` shares the cells
of a unified cache: nothing is computed or duplicated) and the live id is freed. A
new request looks up the longest cached token prefix of its prompt (an index of
rolling hashes of BLOCK-token blocks finds the candidates, then the tokens are
compared exactly), shares those cells into its own sequence and prefills only the
rest, always at least its last token (the logits come from it).

The cache holds at most `limit` cells, a share of the context. An entry started
from another one shares that one's cells for the part it copied, so it counts only
the cells of its own (its `parent` and `shared`); everything else is counted in
full, even where a live sequence shares an entry's cells, so the engine's
reservations plus `cells` never exceed the context and `llama_decode` never runs
short. Live requests come first: the engine
evicts least recently used entries before a request would wait for cells.

Everything runs on the decode thread except `summary`, which reads an immutable
snapshot the thread replaces on every change.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.prefix import PrefixChain
from worker.engines.prefix_summary import PrefixSummary, summary_links

BLOCK = 32  # tokens per index block: a prefix shorter than one block is not worth a lookup
# Sequence ids of cached prefixes, beyond the live ones; llama.cpp caps ids at 64 in
# some builds, so the total stays within that.
MAX_CACHED_PREFIXES = 16
MAX_SEQUENCE_IDS = 64


def cache_sequences(n_live: int, share: float) -> int:
    """Sequence ids the context needs for cached prefixes (0: reuse off)."""
    if share <= 0:
        return 0
    return max(min(MAX_CACHED_PREFIXES, MAX_SEQUENCE_IDS - n_live), 0)


@dataclass(eq=False)
class CachedPrefix:
    seq_id: int
    tokens: list[int]  # the KV of positions 0..len-1, exactly these tokens
    chains: list[tuple[int, ...]]  # link hashes of the request chains it holds, newest last
    keys: list[int]  # rolling hashes of its full blocks: the lookup index's keys
    # The entry whose cells its first `shared` positions are (copied from it); None: its own.
    parent: CachedPrefix | None = None
    shared: int = 0

    @property
    def own_cells(self) -> int:
        return len(self.tokens) - self.shared


def block_keys(tokens: Sequence[int]) -> list[int]:
    """keys[k] names tokens[: BLOCK * (k + 1)] (process-local hashes: never published)."""
    keys: list[int] = []
    h = 0
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        h = hash((h, tuple(tokens[start : start + BLOCK])))
        keys.append(h)
    return keys


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i + BLOCK <= n and a[i : i + BLOCK] == b[i : i + BLOCK]:
        i += BLOCK
    while i < n and a[i] == b[i]:
        i += 1
    return i


class KvPrefixCache:
    def __init__(self, llama_cpp: Any, ctx: Any, *, limit: int, seq_ids: Iterable[int]) -> None:
        self._llama_cpp, self._ctx = llama_cpp, ctx
        self.limit = limit
        self._free_ids = sorted(seq_ids, reverse=True)
        self._entries: collections.OrderedDict[int, CachedPrefix] = collections.OrderedDict()
        self._index: dict[int, set[int]] = collections.defaultdict(set)
        self._summary = PrefixSummary((), 0, limit)

    # -- lookups -------------------------------------------------------------------

    def match(self, prompt: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        """The entry holding the longest prefix of `prompt`, and how many of its tokens
        to reuse (at most all but the prompt's last); (None, 0) when none holds a block."""
        best: CachedPrefix | None = None
        best_len = 0
        for key in reversed(block_keys(prompt)):
            for seq_id in self._index.get(key, ()):
                entry = self._entries[seq_id]
                n = common_prefix(entry.tokens, prompt)
                if n > best_len:
                    best, best_len = entry, n
            if best is not None:
                break
        best_len = min(best_len, len(prompt) - 1)
        if best is None or best_len < BLOCK:
            return None, 0
        self._entries.move_to_end(best.seq_id)
        self._publish()
        return best, best_len

    def summary(self) -> PrefixSummary:
        return self._summary

    @property
    def cells(self) -> int:
        """KV cells the cached prefixes hold (beyond those they share with each other)."""
        return sum(e.own_cells for e in self._entries.values())

    # -- changes -------------------------------------------------------------------

    def copy_into(self, entry: CachedPrefix, seq_id: int, n: int) -> None:
        """Share the entry's first n positions into live sequence `seq_id` (emptied first)."""
        memory = self._memory()
        self._llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        self._llama_cpp.llama_memory_seq_cp(memory, entry.seq_id, seq_id, 0, n)

    def reclaim(self, reserved: int, n_ctx: int, *, keep: CachedPrefix | None = None) -> None:
        """Evict least recently used entries (`keep` last of all) until reserved + cells fit."""
        while reserved + self.cells > n_ctx and self._entries:
            victim = next((e for e in self._entries.values() if e is not keep), keep)
            assert victim is not None
            self._evict(victim)
        self._publish()

    def keep(
        self,
        seq_id: int,
        tokens: list[int],
        chains: Sequence[PrefixChain],
        *,
        source: CachedPrefix | None = None,
        shared: int = 0,
    ) -> None:
        """A finished live sequence's KV (its first `shared` positions copied from
        `source`): kept as the newest entry if it fits the limit, replacing entries it
        extends; the live sequence itself is left to its owner."""
        if len(tokens) < BLOCK or len(tokens) > self.limit:
            return
        for old in self._entries.values():
            if common_prefix(old.tokens, tokens) == len(tokens):  # held already: name it so
                old.chains = list(dict.fromkeys([*old.chains, *(c.hashes for c in chains)]))
                self._entries.move_to_end(old.seq_id)
                self._publish()
                return
        alive = source is not None and self._entries.get(source.seq_id) is source
        entry = CachedPrefix(-1, tokens, [], block_keys(tokens))
        if alive:
            entry.parent, entry.shared = source, shared
        held: list[tuple[int, ...]] = []
        for old in list(self._entries.values()):
            if len(old.tokens) <= len(tokens) and common_prefix(old.tokens, tokens) == len(
                old.tokens
            ):
                held.extend(old.chains)  # everything it held, the new entry holds too
                self._evict(old, entry)
        while self._entries and (not self._free_ids or self.cells + entry.own_cells > self.limit):
            self._evict(next(iter(self._entries.values())), entry)
        entry.seq_id = self._free_ids.pop()
        entry.chains = list(dict.fromkeys([*held, *(c.hashes for c in chains)]))
        self._llama_cpp.llama_memory_seq_cp(self._memory(), seq_id, entry.seq_id, -1, -1)
        self._entries[entry.seq_id] = entry
        for key in entry.keys:
            self._index[key].add(entry.seq_id)
        self._publish()

    def clear(self) -> None:
        for entry in list(self._entries.values()):
            self._evict(entry)
        self._publish()

    # -- internals -----------------------------------------------------------------

    def _evict(self, entry: CachedPrefix, newcomer: CachedPrefix | None = None) -> None:
        del self._entries[entry.seq_id]
        # Its children keep the cells they share with it: they now share with its parent
        # only what it shared, and own the rest.
        for child in [*self._entries.values(), *([newcomer] if newcomer else [])]:
            if child.parent is entry:
                child.parent = entry.parent
                child.shared = min(child.shared, entry.shared) if entry.parent else 0
        for key in entry.keys:
            ids = self._index[key]
            ids.discard(entry.seq_id)
            if not ids:
                del self._index[key]
        self._llama_cpp.llama_memory_seq_rm(self._memory(), entry.seq_id, -1, -1)
        self._free_ids.append(entry.seq_id)

    def _publish(self) -> None:
        newest = itertools.chain.from_iterable(
            reversed(e.chains) for e in reversed(self._entries.values())
        )
        self._summary = PrefixSummary(summary_links(newest), self.cells, self.limit)

    def _memory(self) -> Any:
        return self._llama_cpp.llama_get_memory(self._ctx.ctx)
