"""Per model, which workers hold it warm or loading and which hold each prefix link they
publish: kept current as statuses arrive, so a scheduling cycle finds the candidates
that matter without looking at every worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from modelyard.refs import ModelKey
from modelyard.v1 import worker_pb2
from router.state.address_bag import AddressBag

RESIDENT = frozenset({worker_pb2.RESIDENCY_STATE_WARM, worker_pb2.RESIDENCY_STATE_LOADING})
_NONE: Sequence[str] = ()
K = TypeVar("K")


class WorkerIndex:
    def __init__(self) -> None:
        self._resident: dict[ModelKey, AddressBag] = {}
        self._holders: dict[tuple[ModelKey, int], AddressBag] = {}
        # What is indexed per worker, so an update touches only what changed.
        self._resident_of: dict[str, frozenset[ModelKey]] = {}
        self._prefixes_of: dict[str, Mapping[ModelKey, frozenset[int]]] = {}

    def resident(self, model: ModelKey) -> Sequence[str]:
        """Workers holding `model` warm or loading (indexable, for random draws)."""
        bag = self._resident.get(model)
        return bag.members() if bag is not None else _NONE

    def holders(self, model: ModelKey, link: int) -> Sequence[str]:
        """Workers whose published summary lists `link` for `model`."""
        bag = self._holders.get((model, link))
        return bag.members() if bag is not None else _NONE

    def set_residency(
        self, address: str, residencies: Mapping[ModelKey, worker_pb2.ResidencyState.ValueType]
    ) -> None:
        now = frozenset(k for k, state in residencies.items() if state in RESIDENT)
        before = self._resident_of.get(address, frozenset())
        if now == before:  # a heartbeat, or a change elsewhere: nothing to move
            return
        for key in before - now:
            _discard(self._resident, key, address)
        for key in now - before:
            self._resident.setdefault(key, AddressBag()).add(address)
        self._resident_of[address] = now

    def set_prefixes(self, address: str, prefix_sets: Mapping[ModelKey, frozenset[int]]) -> None:
        before = self._prefixes_of.get(address, {})
        for key in before.keys() | prefix_sets.keys():
            old, new = before.get(key, frozenset()), prefix_sets.get(key, frozenset())
            for link in old - new:
                _discard(self._holders, (key, link), address)
            for link in new - old:
                self._holders.setdefault((key, link), AddressBag()).add(address)
        self._prefixes_of[address] = prefix_sets

    def forget(self, address: str) -> None:
        self.set_residency(address, {})
        self.set_prefixes(address, {})
        self._resident_of.pop(address, None)
        self._prefixes_of.pop(address, None)


def _discard(table: dict[K, AddressBag], key: K, address: str) -> None:
    bag = table.get(key)
    if bag is not None:
        bag.discard(address)
        if not bag:
            del table[key]
