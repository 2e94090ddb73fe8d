"""Which worker this router recently sent each request prefix to, per model.

The approximate half of prefix routing, for workers that publish no prefix summary:
a request committed to a worker leaves its chain's link hashes here, and the next
request sharing a prefix guesses that the worker still holds it. The guess ages out
in LRU order; the table is bounded in entries, whatever the traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence

from modelyard.prefix import PrefixChain
from modelyard.refs import ModelKey

MAX_ENTRIES = 65_536
# A prefix many requests share (a system prompt) may sit on several workers; the most
# recent few are remembered, so load balancing of a shared prefix does not erase it.
MAX_WORKERS_PER_LINK = 4


class PrefixHistory:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        # (model, link hash) -> workers that were sent it, most recent last.
        self._links: OrderedDict[tuple[ModelKey, int], list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def record(self, model: ModelKey, worker: str, chain: PrefixChain) -> None:
        """`worker` now holds (we guess) every prefix of `chain` for `model`."""
        # Longest prefix first, so it is also the first to age out: the short ones are
        # shared by more requests.
        for link in reversed(chain.hashes):
            key = (model, link)
            workers = self._links.get(key)
            if workers is None:
                self._links[key] = [worker]
                continue
            self._links.move_to_end(key)
            if worker in workers:
                workers.remove(worker)
            workers.append(worker)
            del workers[:-MAX_WORKERS_PER_LINK]
        while len(self._links) > self._max:
            self._links.popitem(last=False)

    def workers_of(self, model: ModelKey, link: int) -> Sequence[str]:
        """The workers we guess hold `link` for `model`, most recent last."""
        return self._links.get((model, link), ())

    def holds(self, model: ModelKey, worker: str, link: int) -> bool:
        return worker in self._links.get((model, link), ())

    def held_by(self, model: ModelKey, worker: str) -> Collection[int]:
        """The link hashes we guess `worker` holds for `model`, as a live view."""
        return _HeldBy(self, model, worker)

    def links_of(self, model: ModelKey, worker: str) -> Iterator[int]:
        for (m, link), workers in self._links.items():
            if m == model and worker in workers:
                yield link


class _HeldBy(Collection[int]):
    """Membership is what PrefixChain.held asks, one lookup per link; iterating walks
    the whole table and is only for inspection."""

    def __init__(self, history: PrefixHistory, model: ModelKey, worker: str) -> None:
        self._history, self._model, self._worker = history, model, worker

    def __contains__(self, link: object) -> bool:
        return isinstance(link, int) and self._history.holds(self._model, self._worker, link)

    def __iter__(self) -> Iterator[int]:
        return self._history.links_of(self._model, self._worker)

    def __len__(self) -> int:
        return sum(1 for _ in self)
