"""Per-model and per-arm traffic statistics, and the feedback book, in bounded memory.

Latency percentiles come from log-scale buckets (modelyard.latency_buckets): the memory
per series is bounded by the range of values, not by the request count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelyard.latency_buckets import bucket_of, quantile
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, router_pb2

# Keys (models, arms) kept at most: the catalogue bounds them; this guards against
# a churning catalogue.
MAX_SERIES = 1024
# GetRoutingStats' window over this replica's own figures: kept per minute, for an hour.
WINDOW_STEP_S = 60
MAX_WINDOW_S = 3600


class LogHistogram:
    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0

    def add(self, ms: float) -> None:
        index = bucket_of(ms)
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1

    def quantile(self, q: float) -> float:
        """The value at quantile q (0..1), as the bucket's geometric midpoint; 0 if empty."""
        return quantile(self._buckets, q)

    def merge(self, other: LogHistogram) -> None:
        for index, count in other._buckets.items():
            self._buckets[index] = self._buckets.get(index, 0) + count
        self.count += other.count

    def summary(self) -> router_pb2.LatencySummary:
        return router_pb2.LatencySummary(
            p50_ms=self.quantile(0.5), p95_ms=self.quantile(0.95), p99_ms=self.quantile(0.99)
        )


@dataclass
class Traffic:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    ttft: LogHistogram = field(default_factory=LogHistogram)
    total: LogHistogram = field(default_factory=LogHistogram)
    feedback_sum: float = 0.0
    feedback_count: int = 0
    cached_requests: int = 0
    cached_input_tokens: int = 0

    def merge(self, other: Traffic) -> None:
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ttft.merge(other.ttft)
        self.total.merge(other.total)

    def to_proto(self, reference_usd_per_1k: float) -> router_pb2.TrafficStats:
        reference = reference_usd_per_1k * (self.input_tokens + self.output_tokens) / 1000
        return router_pb2.TrafficStats(
            requests=self.requests,
            errors=self.errors,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            ttft=self.ttft.summary(),
            total_latency=self.total.summary(),
            mean_feedback_score=(
                self.feedback_sum / self.feedback_count if self.feedback_count else 0.0
            ),
            feedback_count=self.feedback_count,
            savings_usd=reference - self.cost_usd if reference_usd_per_1k else 0.0,
            cached_requests=self.cached_requests,
            cached_input_tokens=self.cached_input_tokens,
        )


_COUNTS = tuple(f.name for f in dataclasses.fields(Traffic) if f.name not in ("ttft", "total"))


class WindowedTraffic:
    """A series' traffic since the router started, and per minute for the last hour (what
    GetRoutingStats' window reads when the registry's mesh-wide figures are not there)."""

    def __init__(self) -> None:
        self.total = Traffic()
        self._minutes: deque[tuple[int, Traffic]] = deque()  # (minute number, traffic)

    def now(self, at_s: float) -> tuple[Traffic, Traffic]:
        """The running total and the traffic of the minute `at_s` falls in."""
        minute = int(at_s // WINDOW_STEP_S)
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append((minute, Traffic()))
            # One minute more than the longest window: its oldest minute is partly in it.
            while self._minutes[0][0] < minute - MAX_WINDOW_S // WINDOW_STEP_S:
                self._minutes.popleft()
        return self.total, self._minutes[-1][1]

    def since(self, first_minute: int | None) -> Traffic | None:
        """The traffic of minutes `first_minute` on (None: since the start); None if a
        window had none."""
        if first_minute is None:
            return self.total
        merged = Traffic()
        for minute, traffic in reversed(self._minutes):
            if minute < first_minute:
                break
            merged.merge(traffic)
        return merged if merged.requests or merged.feedback_count else None


ModelSeriesKey = tuple[str, str]  # (name, version): sorts by name, then version
ArmKey = tuple[str, str, str]  # (route, arm, model label)


@dataclass(frozen=True)
class Outcome:
    """One finished (or failed) request as the stats see it."""

    model: str
    version: str
    route: str = ""
    arm: str = ""
    ok: bool = True
    usage: common_pb2.Usage | None = None
    cost_usd: float = 0.0
    ttft_ms: float | None = None
    total_ms: float | None = None
    client: str = ""  # the name of the API key that made the request ("" when open)
    cached: bool = False  # answered from the router's response cache: no worker, no cost
    attempt: int = 0  # the attempt that served it (1: the first); 0: not known

    @property
    def label(self) -> str:
        """The model's key, or the target's name when the request failed before a model
        was chosen (then `version` is empty)."""
        return model_key(self.model, self.version) if self.version else self.model


class _Series(OrderedDict[tuple[str, ...], WindowedTraffic]):
    def get_or_add(self, key: tuple[str, ...]) -> WindowedTraffic:
        traffic = self.get(key)
        if traffic is None:
            traffic = self[key] = WindowedTraffic()
            if len(self) > MAX_SERIES:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return traffic


def may_score(scorer: str, maker: str) -> bool:
    """Feedback through key `scorer` on a request key `maker` made ("": no key)."""
    return not scorer or not maker or scorer == maker


@dataclass(frozen=True)
class _Scorable:
    at: float
    model: ModelSeriesKey
    arm: ArmKey | None
    client: str


class FeedbackBook:
    """Recent request ids -> the stats keys they counted under, bounded in size and age."""

    def __init__(
        self,
        max_entries: int = 100_000,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Scorable] = OrderedDict()

    def remember(
        self, request_id: str, model: ModelSeriesKey, arm: ArmKey | None, client: str = ""
    ) -> None:
        self._entries.pop(request_id, None)
        self._entries[request_id] = _Scorable(self._clock(), model, arm, client)
        self._expire()
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def take(
        self, request_id: str, client: str = ""
    ) -> tuple[ModelSeriesKey, ArmKey | None] | None:
        """The request's stats keys, once: a request is scored at most one time, and only
        through the key that made it (`client` "": an operator, or an open router)."""
        self._expire()
        entry = self._entries.get(request_id)
        if entry is None or not may_score(client, entry.client):
            return None  # another key's request looks unknown: ids tell nothing
        del self._entries[request_id]
        return entry.model, entry.arm

    def _expire(self) -> None:
        cutoff = self._clock() - self._ttl_s
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.at >= cutoff:
                return
            self._entries.popitem(last=False)


class RoutingStats:
    def __init__(
        self,
        *,
        reference_usd_per_1k: float = 0.0,
        feedback: FeedbackBook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reference = reference_usd_per_1k
        self._clock = clock
        self._models = _Series()
        self._arms = _Series()
        self.feedback = feedback or FeedbackBook()

    def record(self, request_id: str, outcome: Outcome) -> None:
        series_key: ModelSeriesKey = (outcome.model, outcome.version)
        arm_key: ArmKey | None = (
            (outcome.route, outcome.arm, outcome.label) if outcome.route else None
        )
        series = [self._models.get_or_add(series_key)]
        if arm_key is not None:
            series.append(self._arms.get_or_add(arm_key))
        now = self._clock()
        for windowed in series:
            for traffic in windowed.now(now):
                _add(traffic, outcome)
        if outcome.ok:
            self.feedback.remember(request_id, series_key, arm_key, outcome.client)

    def record_feedback(self, request_id: str, score: float, client: str = "") -> bool:
        """False when the request id is unknown, expired, already scored, or made by
        another key than `client`."""
        found = self.feedback.take(request_id, client)
        if found is None:
            return False
        series_key, arm_key = found
        keys: list[tuple[_Series, tuple[str, ...]]] = [(self._models, series_key)]
        if arm_key is not None:
            keys.append((self._arms, arm_key))
        now = self._clock()
        for series, key in keys:
            for traffic in series.get_or_add(key).now(now):  # scored now, counted now
                traffic.feedback_sum += score
                traffic.feedback_count += 1
        return True

    def to_proto(
        self, model: str = "", route: str = "", window_s: int = 0
    ) -> router_pb2.GetRoutingStatsResponse:
        """This replica's figures; with `window_s`, those of the minutes that overlap the
        last `window_s` seconds (at most MAX_WINDOW_S), series with none left out."""
        reply = router_pb2.GetRoutingStatsResponse()
        first: int | None = None  # the oldest minute counted; None: since the start
        if window_s:
            now = self._clock()
            first = int((now - min(window_s, MAX_WINDOW_S)) // WINDOW_STEP_S)
            reply.window_seconds = math.ceil(now - first * WINDOW_STEP_S)
        for (name, version), windowed in sorted(self._models.items()):
            if model and model not in (name, model_key(name, version)):
                continue
            if (traffic := windowed.since(first)) is not None:
                stats = traffic.to_proto(self._reference)
                reply.models.append(
                    router_pb2.ModelStats(model=name, version=version, traffic=stats)
                )
        for (route_name, arm, label), windowed in sorted(self._arms.items()):
            if route and route != route_name:
                continue
            if model and model not in (label, label.partition("@")[0]):
                continue
            if (traffic := windowed.since(first)) is not None:
                stats = traffic.to_proto(self._reference)
                reply.arms.append(
                    router_pb2.ArmStats(route=route_name, arm=arm, model=label, traffic=stats)
                )
        return reply


def _add(traffic: Traffic, outcome: Outcome) -> None:
    traffic.requests += 1
    if not outcome.ok:
        traffic.errors += 1
    if outcome.usage is not None:
        traffic.input_tokens += outcome.usage.input_tokens
        traffic.output_tokens += outcome.usage.output_tokens
        traffic.cached_input_tokens += outcome.usage.cached_input_tokens
    if outcome.cached:
        # A cache hit costs nothing and says nothing about workers' latency.
        traffic.cached_requests += 1
        return
    traffic.cost_usd += outcome.cost_usd
    if outcome.ttft_ms is not None:
        traffic.ttft.add(outcome.ttft_ms)
    if outcome.total_ms is not None and outcome.ok:
        traffic.total.add(outcome.total_ms)
