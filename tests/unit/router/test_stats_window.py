"""GetRoutingStats' window over a replica's own figures (no registry, or the registry away):
kept per minute for an hour, so a window counts the minutes it overlaps and says how far
back that reaches."""

from __future__ import annotations

import pytest

from modelyard.v1 import common_pb2, router_pb2
from router.outcomes.ops import OutcomeOps
from router.stats import MAX_WINDOW_S, Outcome, RoutingStats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def served(model: str = "m", ttft_ms: float = 10.0, route: str = "") -> Outcome:
    return Outcome(
        model=model,
        version="1",
        route=route,
        arm="a" if route else "",
        usage=common_pb2.Usage(input_tokens=3, output_tokens=5),
        ttft_ms=ttft_ms,
        total_ms=ttft_ms * 2,
    )


def requests_of(reply: router_pb2.GetRoutingStatsResponse) -> dict[str, int]:
    return {m.model: m.traffic.requests for m in reply.models}


def test_a_window_counts_the_minutes_it_overlaps_and_says_how_far_back() -> None:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    stats.record("r1", served(ttft_ms=1000.0))  # minute 0
    clock.now = 130.0
    stats.record("r2", served(ttft_ms=10.0))  # minute 2
    clock.now = 150.0

    everything = stats.to_proto()
    assert requests_of(everything) == {"m": 2} and everything.window_seconds == 0
    last_minute = stats.to_proto(window_s=60)  # 90..150 s: minutes 1 and 2
    assert requests_of(last_minute) == {"m": 1} and last_minute.window_seconds == 90
    traffic = last_minute.models[0].traffic
    assert (traffic.input_tokens, traffic.output_tokens) == (3, 5)
    assert traffic.ttft.p99_ms < 100  # r1's second is outside
    both = stats.to_proto(window_s=150)
    assert requests_of(both) == {"m": 2} and both.window_seconds == 150
    assert both.models[0].traffic.ttft.p99_ms > 500  # the minutes' latencies merged


def test_a_series_quiet_in_the_window_is_left_out_and_filters_still_apply() -> None:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    stats.record("r1", served("old", route="ab"))
    clock.now = 600.0
    stats.record("r2", served("new", route="ab"))
    stats.record("r3", served("other"))
    recent = stats.to_proto(window_s=60)
    assert requests_of(recent) == {"new": 1, "other": 1}
    assert [(a.route, a.model) for a in recent.arms] == [("ab", "new@1")]
    assert requests_of(stats.to_proto(model="new", window_s=60)) == {"new": 1}
    assert requests_of(stats.to_proto(model="old", window_s=60)) == {}
    assert requests_of(stats.to_proto(model="old")) == {"old": 1}


def test_the_window_reaches_back_an_hour_at_most_and_memory_stays_bounded() -> None:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    for minute in range(180):  # three hours of traffic, one request a minute
        clock.now = minute * 60.0 + 1
        stats.record(f"r{minute}", served())
    hour = stats.to_proto(window_s=10 * MAX_WINDOW_S)
    assert hour.window_seconds == MAX_WINDOW_S + 1  # widened to whole minutes: 60 or 61 of them
    assert requests_of(hour) == {"m": 61}
    assert requests_of(stats.to_proto()) == {"m": 180}
    assert len(stats._models[("m", "1")]._minutes) <= MAX_WINDOW_S // 60 + 1


def test_feedback_counts_in_the_minute_it_came() -> None:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    stats.record("r1", served())
    clock.now = 300.0
    assert stats.record_feedback("r1", 1.0)
    recent = stats.to_proto(window_s=60)
    assert [(m.traffic.requests, m.traffic.feedback_count) for m in recent.models] == [(0, 1)]
    assert stats.to_proto().models[0].traffic.feedback_count == 1


@pytest.mark.asyncio
async def test_without_a_registry_the_window_is_honoured() -> None:
    clock = Clock()
    stats = RoutingStats(clock=clock)
    stats.record("r1", served())
    clock.now = 7200.0
    stats.record("r2", served())
    ops = OutcomeOps(stats)
    reply = await ops.routing_stats(router_pb2.GetRoutingStatsRequest(window_seconds=300))
    assert requests_of(reply) == {"m": 1} and reply.window_seconds == 300
    assert not reply.mesh_wide
