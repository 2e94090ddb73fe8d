"""A set of worker addresses that can also be indexed, so a random member costs O(1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


class AddressBag:
    def __init__(self) -> None:
        self._items: list[str] = []
        self._at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, address: object) -> bool:
        return address in self._at

    def __getitem__(self, i: int) -> str:
        return self._items[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def members(self) -> Sequence[str]:
        """A live view, in no particular order: read it before the bag changes."""
        return self._items

    def add(self, address: str) -> None:
        if address not in self._at:
            self._at[address] = len(self._items)
            self._items.append(address)

    def discard(self, address: str) -> None:
        i = self._at.pop(address, None)
        if i is None:
            return
        last = self._items.pop()
        if last != address:  # move the last into the hole
            self._items[i] = last
            self._at[last] = i
