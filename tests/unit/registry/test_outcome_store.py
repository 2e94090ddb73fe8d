"""The outcome store on SQLite and PostgreSQL: idempotent batches, feedback once, stats with
the router's semantics, folding into windows under an injected clock, no catalogue churn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.errors import AlreadyExists, InvalidArgument, NotFound
from modelyard.v1 import outcomes_pb2, router_pb2
from registry.outcome_fold import fold_pass
from registry.outcomes import MAX_BATCH, OutcomeStore, Retention
from registry.store import RegistryStore

T0 = 1_800_000_000.0  # an arbitrary epoch second, on a minute boundary


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def outcomes(store: RegistryStore, clock: Clock) -> AsyncIterator[OutcomeStore]:
    yield OutcomeStore(
        store.engine,
        retention=Retention(raw_s=3600, window_s=60, windows_s=86_400),
        clock=clock,
    )


def outcome(request_id: str, at: float = T0, **fields: object) -> outcomes_pb2.Outcome:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(at * 1000))
    values: dict[str, object] = {
        "model": "smollm2",
        "version": "1",
        "route": "chat",
        "arm": "a",
        "input_tokens": 10,
        "output_tokens": 5,
        "cost_usd": 0.001,
        "ttft_ms": 100.0,
        "total_ms": 400.0,
        **fields,
    }
    return outcomes_pb2.Outcome(request_id=request_id, finished_at=stamp, **values)  # type: ignore[arg-type]


def assert_same(a: router_pb2.TrafficStats, b: router_pb2.TrafficStats) -> None:
    """Equal figures; cost sums may differ in the last bits (summed in another order)."""
    assert a.cost_usd == pytest.approx(b.cost_usd)
    copies = [router_pb2.TrafficStats(), router_pb2.TrafficStats()]
    for copy, original in zip(copies, (a, b), strict=True):
        copy.CopyFrom(original)
        copy.ClearField("cost_usd")
    assert copies[0] == copies[1]


def only_model(reply: outcomes_pb2.QueryOutcomeStatsResponse) -> router_pb2.TrafficStats:
    assert len(reply.models) == 1
    return reply.models[0].traffic


async def test_a_retried_batch_never_counts_twice_and_the_revision_stays(
    store: RegistryStore, outcomes: OutcomeStore
) -> None:
    revision = await store.revision()
    batch = [outcome(f"r{i}") for i in range(3)]
    assert await outcomes.record(batch) == 3
    assert await outcomes.record([*batch, outcome("r3")]) == 1  # the retry adds only r3
    assert await outcomes.record([outcome("r4"), outcome("r4")]) == 1  # repeated in a batch
    traffic = only_model(await outcomes.query())
    assert traffic.requests == 5 and traffic.input_tokens == 50
    assert await store.revision() == revision  # outcomes are not catalogue changes
    with pytest.raises(InvalidArgument):
        await outcomes.record([outcome(f"x{i}") for i in range(MAX_BATCH + 1)])
    with pytest.raises(InvalidArgument):
        await outcomes.record([outcome("bad", cost_usd=float("nan"))])


async def test_feedback_once_with_its_comment(outcomes: OutcomeStore) -> None:
    await outcomes.record([outcome("ok"), outcome("failed", status_code=14)])
    await outcomes.attach_feedback("ok", 0.5, "fine answer")
    assert await outcomes.feedback_comment("ok") == "fine answer"
    with pytest.raises(AlreadyExists):
        await outcomes.attach_feedback("ok", 1.0, "")
    for unknown in ("failed", "never-seen"):
        with pytest.raises(NotFound):
            await outcomes.attach_feedback(unknown, 1.0, "")
    with pytest.raises(InvalidArgument):
        await outcomes.attach_feedback("ok", 1.0, "é" * 1025)  # 2050 bytes
    traffic = only_model(await outcomes.query())
    assert traffic.feedback_count == 1 and traffic.mean_feedback_score == 0.5


async def test_feedback_only_through_the_key_that_made_the_request(
    outcomes: OutcomeStore,
) -> None:
    await outcomes.record([outcome("bobs", client="bob"), outcome("open")])
    # Another key's request looks unknown (NOT_FOUND, not ALREADY_EXISTS or DENIED).
    with pytest.raises(NotFound):
        await outcomes.attach_feedback("bobs", 1.0, "", client="alice")
    await outcomes.attach_feedback("bobs", 1.0, "mine", client="bob")
    with pytest.raises(AlreadyExists):
        await outcomes.attach_feedback("bobs", 1.0, "", client="bob")
    # A request made without a key may be scored through one; "" (operator) scores any.
    await outcomes.attach_feedback("open", 0.0, "", client="alice")
    traffic = only_model(await outcomes.query())
    assert traffic.feedback_count == 2


async def test_stats_follow_the_routers_semantics(outcomes: OutcomeStore) -> None:
    await outcomes.record(
        [
            *(outcome(f"fast{i}", ttft_ms=100.0) for i in range(19)),
            outcome("slow", ttft_ms=5000.0),
            outcome("err", status_code=14, output_tokens=0, total_ms=9000.0),
            outcome("hit", cached=True, cost_usd=0.5, ttft_ms=1.0, total_ms=1.0),
            outcome("b", arm="b", version="2"),
            outcome("plain", route="", arm="", model="other"),
        ]
    )
    reply = await outcomes.query(model="smollm2@1")
    traffic = only_model(reply)
    assert (traffic.requests, traffic.errors, traffic.cached_requests) == (22, 1, 1)
    assert traffic.cost_usd == pytest.approx(0.001 * 21)  # the cache hit costs nothing
    assert traffic.ttft.p50_ms == pytest.approx(100, rel=0.02)
    assert traffic.ttft.p99_ms == pytest.approx(5000, rel=0.02)
    assert traffic.total_latency.p99_ms == pytest.approx(400, rel=0.02)  # not the error's
    assert [(a.route, a.arm, a.model) for a in reply.arms] == [("chat", "a", "smollm2@1")]
    everything = await outcomes.query(route="chat")
    assert [m.model for m in everything.models] == ["other", "smollm2", "smollm2"]
    assert [a.arm for a in everything.arms] == ["a", "b"]


async def test_old_outcomes_fold_into_windows_with_the_same_figures(
    outcomes: OutcomeStore, clock: Clock
) -> None:
    await outcomes.record(
        [outcome(f"r{i}", at=T0 + i, ttft_ms=50.0 * (i + 1)) for i in range(30)]
        + [outcome("later", at=T0 + 1800)]
    )
    await outcomes.attach_feedback("r0", 2.0, "")
    before = only_model(await outcomes.query())
    clock.now = T0 + 3600 + 60  # the first 30 are past the raw retention, "later" is not
    assert await fold_pass(outcomes, batch=7) == 30  # in several bounded batches
    after = only_model(await outcomes.query())
    assert_same(after, before)
    with pytest.raises(NotFound):  # feedback needs the raw row
        await outcomes.attach_feedback("r1", 1.0, "")
    assert await fold_pass(outcomes) == 0  # nothing left to fold: no double counting
    assert_same(only_model(await outcomes.query()), before)
    # A window: "later" alone is raw and recent; the folded minute is out of range.
    assert only_model(await outcomes.query(window_seconds=1900)).requests == 1
    clock.now = T0 + 86_400 + 120  # the windows expire; "later" is still raw but folds now
    await fold_pass(outcomes)
    await fold_pass(outcomes)
    reply = await outcomes.query()
    assert only_model(reply).requests == 1
