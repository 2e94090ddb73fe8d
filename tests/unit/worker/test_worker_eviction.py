"""The eviction planner: a pure function from (need, budget, models in memory) to a plan."""

from __future__ import annotations

from worker.residency.eviction import Busy, Evict, Holder, TooLarge, plan_eviction

MiB = 1 << 20


def idle(key: str, size: int, last_used: float) -> Holder:
    return Holder(key, size * MiB, last_used, evictable=True)


def busy(key: str, size: int, last_used: float = 0.0) -> Holder:
    return Holder(key, size * MiB, last_used, evictable=False)


def test_it_fits_as_is_when_there_is_room() -> None:
    assert plan_eviction(10 * MiB, 100 * MiB, [idle("a", 50, 1.0)]) == Evict(())


def test_least_recently_used_idle_models_go_first_and_only_as_many_as_needed() -> None:
    holders = [idle("new", 30, 3.0), idle("old", 30, 1.0), idle("mid", 30, 2.0)]
    assert plan_eviction(50 * MiB, 100 * MiB, holders) == Evict(("old", "mid"))
    assert plan_eviction(20 * MiB, 100 * MiB, holders) == Evict(("old",))


def test_busy_and_pinned_models_are_never_victims() -> None:
    holders = [busy("serving", 60, 0.0), idle("idle", 20, 5.0)]
    assert plan_eviction(30 * MiB, 100 * MiB, holders) == Evict(("idle",))


def test_it_refuses_when_only_busy_models_could_make_room() -> None:
    holders = [busy("serving", 60), idle("idle", 20, 5.0)]
    plan = plan_eviction(50 * MiB, 100 * MiB, holders)
    assert plan == Busy(available_bytes=40 * MiB, busy=("serving",))


def test_a_model_larger_than_the_budget_can_never_fit() -> None:
    assert plan_eviction(101 * MiB, 100 * MiB, []) == TooLarge()


def test_exactly_full_fits() -> None:
    assert plan_eviction(50 * MiB, 100 * MiB, [idle("a", 50, 1.0)]) == Evict(())


def cached(key: str, size: int, cache: int, last_used: float, *, evictable: bool) -> Holder:
    return Holder(key, size * MiB, last_used, evictable, reclaimable=cache * MiB)


def test_cached_prefixes_go_before_any_model_and_only_as_much_as_needed() -> None:
    # Busy or idle, a model's cached prefixes shrink first, least recently used first.
    holders = [
        cached("busy", 40, 10, 2.0, evictable=False),
        cached("idle", 40, 10, 1.0, evictable=True),
    ]
    assert plan_eviction(25 * MiB, 100 * MiB, holders) == Evict((), (("idle", 5 * MiB),))
    assert plan_eviction(35 * MiB, 100 * MiB, holders) == Evict(
        (), (("idle", 10 * MiB), ("busy", 5 * MiB))
    )


def test_an_idle_model_goes_once_every_cache_has_shrunk_and_its_own_is_not_shrunk() -> None:
    holders = [
        cached("busy", 40, 10, 2.0, evictable=False),
        cached("idle", 40, 10, 1.0, evictable=True),
    ]
    # 20 MiB of caches are not enough for 45: the idle model goes (its cache with it).
    assert plan_eviction(45 * MiB, 100 * MiB, holders) == Evict(("idle",), (("busy", 10 * MiB),))
    # Nothing is shrunk when even that would not make room.
    plan = plan_eviction(75 * MiB, 100 * MiB, holders)
    assert plan == Busy(available_bytes=70 * MiB, busy=("busy",))
