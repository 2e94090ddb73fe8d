"""Per-model and per-arm traffic statistics, and the feedback book, in bounded memory.

Latency percentiles come from log-scale buckets (modelyard.latency_buckets): the memory
per series is bounded by the range of values, not by the request count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from modelyard.latency_buckets import bucket_of, quantile
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, router_pb2

# Keys (models, arms) kept at most: the catalogue bounds them; this guards against
# a churning catalogue.
MAX_SERIES = 1024


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


class _Series(OrderedDict[tuple[str, ...], Traffic]):
    def get_or_add(self, key: tuple[str, ...]) -> Traffic:
        traffic = self.get(key)
        if traffic is None:
            traffic = self[key] = Traffic()
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
    ) -> None:
        self._reference = reference_usd_per_1k
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
        for traffic in series:
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
        for series, key in keys:
            traffic = series.get_or_add(key)
            traffic.feedback_sum += score
            traffic.feedback_count += 1
        return True

    def to_proto(self, model: str = "", route: str = "") -> router_pb2.GetRoutingStatsResponse:
        reply = router_pb2.GetRoutingStatsResponse()
        for (name, version), traffic in sorted(self._models.items()):
            if model and model not in (name, model_key(name, version)):
                continue
            reply.models.append(
                router_pb2.ModelStats(
                    model=name, version=version, traffic=traffic.to_proto(self._reference)
                )
            )
        for (route_name, arm, label), traffic in sorted(self._arms.items()):
            if route and route != route_name:
                continue
            if model and model not in (label, label.partition("@")[0]):
                continue
            reply.arms.append(
                router_pb2.ArmStats(
                    route=route_name,
                    arm=arm,
                    model=label,
                    traffic=traffic.to_proto(self._reference),
                )
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
