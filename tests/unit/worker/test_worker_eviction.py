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
