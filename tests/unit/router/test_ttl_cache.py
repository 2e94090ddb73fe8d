"""TtlCache: fresh within the TTL, stale kept for outages, and bounded (its keys come
from requests: an "auto" request's tags)."""

from __future__ import annotations

from router.ttl_cache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_fresh_for_the_ttl_then_only_stale() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock)
    cache.put("a", 1)

    clock.now += 5.0
    assert cache.fresh("a") == 1
    clock.now += 0.1
    assert cache.fresh("a") is None
    assert cache.any_age("a") == 1
    cache.drop("a")
    assert cache.any_age("a") is None


def test_distinct_keys_beyond_the_bound_put_out_the_oldest() -> None:
    cache: TtlCache[str, int] = TtlCache(5.0, Clock(), max_entries=3)
    for i in range(10):
        cache.put(f"tags-{i}", i)
    cache.put("tags-7", 70)  # put again: now the newest
    cache.put("tags-10", 10)

    assert len(cache) == 3
    assert [cache.any_age(f"tags-{i}") for i in (7, 9, 10)] == [70, 9, 10]
    assert cache.any_age("tags-8") is None
