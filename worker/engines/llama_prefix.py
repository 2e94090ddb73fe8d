"""Prefix reuse for the llama.cpp batched engine: finished sequences' KV kept in host
memory as an LRU, restored into a new request's sequence.

When a sequence finishes, its KV (the whole prompt and, unless the model's
`prefix_cache_replies` is "0", the reply tokens it fed) is saved out of the context
(`llama_state_seq_get_data`: ~23 KB a token for SmolLM2, ~15 ms per 1,000 tokens)
and its cells are freed. A new request looks up the longest cached token prefix of
its prompt (an index of rolling hashes of BLOCK-token blocks finds the candidates,
then the tokens are compared exactly), restores that entry into its own sequence
(`llama_state_seq_set_data`: ~3 ms per 1,000 tokens), drops the positions past the
common prefix and prefills only the rest, always at least MIN_EVALUATED tokens.

Greedy output with reuse is bit-identical to a cold run's when the reused KV came
from prefill. On this CPU build a token's KV and logits are the same whatever the
size of the prefill batch that computed them, from two tokens up; a batch of one
token (every decode step of a lone sequence) rounds differently
(tests/unit/worker/test_llama_prefix_cache.py checks both). So the last prompt token
never runs alone: a request evaluates at least MIN_EVALUATED tokens, and the decoder
never leaves one prompt token for a step of its own. A reply's KV comes from decode
steps, so reusing it (a chat's next turn, the default) can flip a later near-tie, as
llama.cpp's server warns of its own prompt cache; `prefix_cache_replies: "0"` keeps
the prompt's KV only and makes every reuse exact, at the price of prefilling the last
reply again.

Why not keep the cells in the context, shared with `llama_memory_seq_cp`: in a
unified KV cache every sequence attends over every used cell (masked, but computed),
so 8,000 cached cells made SmolLM2's prefill 3.4x and its decode 4x slower on this
build (bench: 138 -> 41 tokens/s, 13 -> 55 ms a token); cached prefixes must cost
nothing until they are used. This is how llama.cpp's own server keeps prompts
(`--cache-ram`).

The cache holds at most `limit` tokens of KV in host memory (a share of the context:
the worker's memory estimate counts it) and at most MAX_CACHED_PREFIXES entries. An
entry that a newer one extends is dropped (the newer holds all of it).

Everything runs on the decode thread except `summary`, which reads an immutable
snapshot the thread replaces on every change, and `set_limit`, which the worker's
memory manager calls from its loop (the lock): when another model needs room, the
cached prefixes of the models in memory go first (worker/residency/prefix_reserve.py).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.prefix import PrefixChain
from worker.engines.prefix_summary import PrefixSummary, summary_links

BLOCK = 32  # tokens per index block: a prefix shorter than one block is not worth a lookup
# Entries at most: bounds the lookup index and the summary's work.
MAX_CACHED_PREFIXES = 64
# Prompt tokens a request evaluates at least: a one-token batch rounds differently (above).
MIN_EVALUATED = 2


def prefix_cache_tokens(n_ctx: int, share: float) -> int:
    """Tokens of KV the cache may hold in host memory (0: reuse off)."""
    return max(int(n_ctx * share), 0)


@dataclass(eq=False)
class CachedPrefix:
    id: int
    tokens: list[int]  # the KV of positions 0..len-1, exactly these tokens
    chains: list[tuple[int, ...]]  # link hashes of the request chains it holds, newest last
    keys: list[int]  # rolling hashes of its full blocks: the lookup index's keys
    state: bytearray  # llama_state_seq_get_data of its sequence


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
    def __init__(self, llama_cpp: Any, ctx: Any, *, limit: int, replies: bool = True) -> None:
        self._llama_cpp, self._ctx = llama_cpp, ctx
        self.limit = limit
        self.replies = replies  # keep the KV of reply tokens too (reuse then not bit-exact)
        self._ids = itertools.count()
        self._entries: collections.OrderedDict[int, CachedPrefix] = collections.OrderedDict()
        self._index: dict[int, set[int]] = collections.defaultdict(set)
        self._tokens = 0
        self._summary = PrefixSummary((), 0, limit)
        # The decode thread's lookups, saves and restores against `set_limit`'s evictions.
        self._lock = threading.Lock()

    # -- lookups -------------------------------------------------------------------

    def match(self, prompt: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        """The entry holding the longest prefix of `prompt`, and how many of its tokens
        to reuse (all but the prompt's last MIN_EVALUATED at most); (None, 0) when none
        holds a block."""
        with self._lock:
            return self._match(prompt)

    def _match(self, prompt: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        best: CachedPrefix | None = None
        best_len = 0
        for key in reversed(block_keys(prompt)):
            for entry_id in self._index.get(key, ()):
                entry = self._entries[entry_id]
                n = common_prefix(entry.tokens, prompt)
                if n > best_len:
                    best, best_len = entry, n
            if best is not None:
                break
        best_len = min(best_len, len(prompt) - MIN_EVALUATED)
        if best is None or best_len < BLOCK:
            return None, 0
        self._entries.move_to_end(best.id)
        self._publish()
        return best, best_len

    def summary(self) -> PrefixSummary:
        return self._summary

    @property
    def tokens(self) -> int:
        """Tokens of KV the cached prefixes hold in host memory."""
        return self._tokens

    # -- changes -------------------------------------------------------------------

    def restore_into(self, entry: CachedPrefix, seq_id: int, n: int) -> bool:
        """Live sequence `seq_id` (emptied first) starts as the entry's first n positions;
        False (the sequence left empty) when the context has no room for the entry's
        cells right now, or `set_limit` has dropped the entry since `match`."""
        with self._lock:
            return entry.id in self._entries and self._restore(entry, seq_id, n)

    def _restore(self, entry: CachedPrefix, seq_id: int, n: int) -> bool:
        memory = self._llama_cpp.llama_get_memory(self._ctx.ctx)
        self._llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        size = len(entry.state)
        src = (ctypes.c_uint8 * size).from_buffer(entry.state)
        restored = self._llama_cpp.llama_state_seq_set_data(self._ctx.ctx, src, size, seq_id)
        del src
        if restored != size:
            self._llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
            return False
        self._llama_cpp.llama_memory_seq_rm(memory, seq_id, n, -1)
        return True

    def keep(self, seq_id: int, tokens: list[int], chains: Sequence[PrefixChain]) -> None:
        """A finished live sequence's KV of positions 0..len(tokens)-1, saved as the newest
        entry if it fits the limit, replacing entries it extends; the live sequence is
        left to its owner (cut to those positions)."""
        with self._lock:
            self._keep(seq_id, tokens, chains)

    def _keep(self, seq_id: int, tokens: list[int], chains: Sequence[PrefixChain]) -> None:
        if len(tokens) < BLOCK or len(tokens) > self.limit:
            return
        for old in self._entries.values():
            if common_prefix(old.tokens, tokens) == len(tokens):  # held already: name it so
                old.chains = list(dict.fromkeys([*old.chains, *(c.hashes for c in chains)]))
                self._entries.move_to_end(old.id)
                self._publish()
                return
        state = self._save(seq_id, len(tokens))
        if state is None:
            return
        held: list[tuple[int, ...]] = []
        for old in list(self._entries.values()):
            if len(old.tokens) <= len(tokens) and common_prefix(old.tokens, tokens) == len(
                old.tokens
            ):
                held.extend(old.chains)  # everything it held, the new entry holds too
                self._evict(old)
        while self._entries and (
            len(self._entries) >= MAX_CACHED_PREFIXES or self._tokens + len(tokens) > self.limit
        ):
            self._evict(next(iter(self._entries.values())))
        chains_held = list(dict.fromkeys([*held, *(c.hashes for c in chains)]))
        entry = CachedPrefix(next(self._ids), tokens, chains_held, block_keys(tokens), state)
        self._entries[entry.id] = entry
        self._tokens += len(tokens)
        for key in entry.keys:
            self._index[key].add(entry.id)
        self._publish()

    def clear(self) -> None:
        with self._lock:
            for entry in list(self._entries.values()):
                self._evict(entry)
            self._publish()

    def set_limit(self, tokens: int) -> None:
        """From any thread: hold at most `tokens` from now on, least recently used
        entries dropped at once to get there (a live sequence holds its own copy)."""
        with self._lock:
            self.limit = max(tokens, 0)
            while self._entries and self._tokens > self.limit:
                self._evict(next(iter(self._entries.values())))
            self._publish()

    # -- internals -----------------------------------------------------------------

    def _save(self, seq_id: int, n: int) -> bytearray | None:
        memory = self._llama_cpp.llama_get_memory(self._ctx.ctx)
        self._llama_cpp.llama_memory_seq_rm(memory, seq_id, n, -1)  # positions past `tokens`
        size = int(self._llama_cpp.llama_state_seq_get_size(self._ctx.ctx, seq_id))
        if size <= 0:
            return None
        state = bytearray(size)
        dst = (ctypes.c_uint8 * size).from_buffer(state)
        got = self._llama_cpp.llama_state_seq_get_data(self._ctx.ctx, dst, size, seq_id)
        del dst  # releases the buffer export
        return state if got == size else None

    def _evict(self, entry: CachedPrefix) -> None:
        del self._entries[entry.id]
        self._tokens -= len(entry.tokens)
        for key in entry.keys:
            ids = self._index[key]
            ids.discard(entry.id)
            if not ids:
                del self._index[key]

    def _publish(self) -> None:
        newest = itertools.chain.from_iterable(
            reversed(e.chains) for e in reversed(self._entries.values())
        )
        self._summary = PrefixSummary(summary_links(newest), self._tokens, self.limit)
