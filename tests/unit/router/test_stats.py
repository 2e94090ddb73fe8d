import random

from modelyard.v1 import common_pb2
from router.stats import FeedbackBook, LogHistogram, Outcome, RoutingStats


def test_histogram_percentiles_within_two_percent_in_bounded_buckets() -> None:
    h = LogHistogram()
    values = [random.Random(1).uniform(1, 1000) for _ in range(1)]
    rng = random.Random(2)
    values = [rng.uniform(1, 1000) for _ in range(20_000)]
    for v in values:
        h.add(v)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert abs(h.quantile(q) - exact) / exact < 0.03
    assert len(h._buckets) < 400  # ~log(1000)/log(1.02)


def outcome(**fields: object) -> Outcome:
    base: dict[str, object] = {
        "model": "m",
        "version": "1",
        "usage": common_pb2.Usage(input_tokens=100, output_tokens=900),
        "cost_usd": 0.002,
        "ttft_ms": 50.0,
        "total_ms": 500.0,
    }
    base.update(fields)
    return Outcome(**base)  # type: ignore[arg-type]


def test_per_model_and_per_arm_traffic_with_savings() -> None:
    stats = RoutingStats(reference_usd_per_1k=0.01)
    stats.record("r1", outcome(route="chat", arm="control"))
    stats.record("r2", outcome(route="chat", arm="control", ok=False, usage=None, cost_usd=0.0))
    stats.record("r3", outcome())
    reply = stats.to_proto()
    (m,) = reply.models
    assert (m.model, m.version, m.traffic.requests, m.traffic.errors) == ("m", "1", 3, 1)
    assert m.traffic.input_tokens == 200 and m.traffic.output_tokens == 1800
    assert abs(m.traffic.cost_usd - 0.004) < 1e-12
    assert abs(m.traffic.savings_usd - (0.02 - 0.004)) < 1e-12
    assert 48 < m.traffic.ttft.p50_ms < 52
    (arm,) = reply.arms
    assert (arm.route, arm.arm, arm.model, arm.traffic.requests) == ("chat", "control", "m@1", 2)
    assert stats.to_proto(route="other").arms == []


def test_feedback_averages_per_model_and_arm_and_unknown_ids_are_refused() -> None:
    stats = RoutingStats()
    stats.record("r1", outcome(route="chat", arm="b"))
    stats.record("r2", outcome(route="chat", arm="b"))
    stats.record("failed", outcome(ok=False))
    assert stats.record_feedback("r1", 1.0) and stats.record_feedback("r2", 0.0)
    # One score per request: a second one would let a client outvote everyone else.
    assert not stats.record_feedback("r1", 1.0)
    assert not stats.record_feedback("nope", 1.0)
    assert not stats.record_feedback("failed", 1.0)
    reply = stats.to_proto()
    assert reply.models[0].traffic.mean_feedback_score == 0.5
    assert reply.arms[0].traffic.feedback_count == 2


def test_feedback_book_is_bounded_in_size_and_age() -> None:
    now = [0.0]
    book = FeedbackBook(max_entries=2, ttl_s=10, clock=lambda: now[0])
    for rid in ("a", "b", "c"):
        book.remember(rid, ("m", "1"), None)
    assert book.take("a") is None and book.take("b") is not None
    now[0] = 11.0
    assert book.take("c") is None
