"""The prefix scorer on synthetic candidates: share of the request's prefix held,
guarded by the holder's extra queue wait against the prefill the prefix saves."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.prefix import chain_of_messages, chain_of_prompt
from modelyard.v1 import common_pb2
from router.scheduling.filters.latency_ceiling import LatencyCeilingFilter
from router.scheduling.framework import run_cycle
from router.scheduling.predict import predicted_ttft_ms, prefix_gains, uncached_prompt_tokens
from router.scheduling.profiles import build_profiles
from router.scheduling.scorers.prefix import PrefixScorer
from router.scheduling.types import Candidate, Request
from tests.unit.router.scheduling.plugin_kit import WARM, cand, cycle, model, req

HISTORY = [
    common_pb2.ChatMessage(role="system", content="You are a careful assistant. " * 20),
    common_pb2.ChatMessage(role="user", content="Tell me about the mesh. " * 20),
    common_pb2.ChatMessage(role="assistant", content="The mesh routes requests. " * 20),
]
TURN = [*HISTORY, common_pb2.ChatMessage(role="user", content="And the router?")]
CHAIN = chain_of_messages(TURN)
HELD = frozenset(chain_of_messages(HISTORY).hashes)
SHARE = CHAIN.ends[2] / CHAIN.total_bytes
# 400 prompt tokens, 2 ms each: the held share saves SHARE * 800 ms of prefill.
PROMPT_TOKENS = 400
SAVED_MS = SHARE * PROMPT_TOKENS * 2.0


def turn(**fields: Any) -> Request:
    return req(chat=True, prompt_tokens=PROMPT_TOKENS, prefix=CHAIN, **fields)


def worker(name: str, *, held: frozenset[int] = frozenset(), **fields: Any) -> Candidate:
    # Prefill at 2 ms a token: each token queued there waits 2 ms. (Its recent output,
    # 100 tokens/s, is not a queue's price: test_a_queued_prompt_is_priced_at_the_prefill_rate.)
    base: dict[str, Any] = {
        "residency": WARM,
        "ttft_ms": 1000.0,
        "prefill_ms_per_token": 2.0,
        "tokens_per_second": 100.0,
    }
    return cand(name, prefix_held=held, prefix_precise=bool(held), **{**base, **fields})


def test_with_equal_load_the_holder_scores_its_share_and_the_rest_zero() -> None:
    holder, other = worker("a", held=HELD), worker("b")
    scores = PrefixScorer().score(turn(), [holder, other], cycle())
    assert scores[holder] == pytest.approx(SHARE) and 0.9 < SHARE < 1.0
    assert scores[other] == 0.0


def test_no_shared_prefix_empty_chain_or_unknown_model_score_zero() -> None:
    unrelated = frozenset(chain_of_prompt("something else entirely " * 40).hashes)
    cands = [worker("a", held=unrelated), worker("b"), worker("c", m=model("unknown"))]
    for r in (turn(), req(), req(prefix=chain_of_prompt(""))):
        assert set(PrefixScorer().score(r, cands, cycle()).values()) == {0.0}
    assert PrefixScorer().score(turn(), [], cycle()) == {}


def test_a_short_queue_on_the_holder_scales_the_bonus_down() -> None:
    # 150 queued tokens: 300 ms of wait against ~780 ms saved.
    holder, other = worker("a", held=HELD, queued_tokens=150), worker("b")
    scores = PrefixScorer().score(turn(), [holder, other], cycle())
    assert scores[holder] == pytest.approx(SHARE * (SAVED_MS - 300.0) / SAVED_MS)


def test_a_queue_that_costs_more_than_the_saved_prefill_loses_the_bonus() -> None:
    # 400 queued tokens: 800 ms of wait, more than the ~780 ms the prefix saves.
    holder, other = worker("a", held=HELD, queued_tokens=400), worker("b")
    assert SAVED_MS < 800.0
    assert set(PrefixScorer().score(turn(), [holder, other], cycle()).values()) == {0.0}
    # The wait counted is the extra over the least loaded: both busy alike, bonus kept.
    busy_other = worker("b", queued_tokens=400)
    scores = PrefixScorer().score(turn(), [holder, busy_other], cycle())
    assert scores[holder] == pytest.approx(SHARE)


def test_predicted_ttft_drops_by_the_net_saving_and_feeds_the_ceiling() -> None:
    holder, other = worker("a", held=HELD), worker("b")
    state = cycle()
    r = turn()
    assert predicted_ttft_ms(r, other, [holder, other], state) == 1000.0
    assert predicted_ttft_ms(r, holder, [holder, other], state) == pytest.approx(1000 - SAVED_MS)
    kept = LatencyCeilingFilter().filter(turn(max_ttft_ms=500.0), [holder, other], cycle())
    assert list(kept) == [holder]
    # Never below the prefill of the tokens it lacks, whatever the saving took off.
    slow = worker("a", held=HELD, prefill_ms_per_token=100.0)
    lacking = PROMPT_TOKENS * (1 - SHARE) * 100.0
    assert predicted_ttft_ms(r, slow, [slow, other], cycle()) == pytest.approx(lacking)


def test_a_worker_lacking_the_prefix_predicts_at_least_its_cold_prefill() -> None:
    # Its EWMA (200 ms) is of recent cached turns; this one must prefill all 400 tokens.
    holder, other = worker("a", held=HELD), worker("b", ttft_ms=200.0)
    r, state = turn(), cycle()
    assert predicted_ttft_ms(r, other, [holder, other], state) == PROMPT_TOKENS * 2.0
    # A prompt shorter than the EWMA's requests: the EWMA stands.
    short = req(chat=True, prompt_tokens=50)
    assert predicted_ttft_ms(short, worker("b", ttft_ms=200.0), [other], cycle()) == 200.0


def test_the_turn_stays_with_its_holder_though_the_other_had_faster_recent_turns() -> None:
    # The other worker's recent TTFTs were cached turns (200 ms), the holder's were cold
    # ones (1,000 ms); the holder's short queue (300 ms) is far less than the 780 ms the
    # move would prefill again. On the EWMA alone the turn moved.
    profile = build_profiles()[common_pb2.OBJECTIVE_LATENCY]
    for _ in range(4):
        cands = [worker("a", held=HELD, queued_tokens=150), worker("b", ttft_ms=200.0)]
        assert run_cycle(profile, turn(), cands).ordered[0].worker == "a"


def test_a_worker_without_an_estimate_borrows_the_models_mean_then_a_prior() -> None:
    holder = worker("a", held=HELD, prefill_ms_per_token=None)
    measured = worker("b", prefill_ms_per_token=4.0)
    gain = prefix_gains(turn(), [holder, measured], cycle())[holder]
    assert gain.saved_ms == pytest.approx(SHARE * PROMPT_TOKENS * 4.0)
    alone = prefix_gains(turn(), [holder], cycle())[holder]
    assert alone.saved_ms == pytest.approx(SHARE * PROMPT_TOKENS * 1.0)


@pytest.mark.parametrize("objective", [common_pb2.OBJECTIVE_BALANCED, common_pb2.OBJECTIVE_LATENCY])
def test_profiles_send_the_turn_to_the_holder_unless_its_queue_is_long(
    objective: common_pb2.Objective.ValueType,
) -> None:
    profile = build_profiles()[objective]
    assert "prefix" in [s.name for s, _ in profile.scorers]
    r = turn(objective=objective)
    for _ in range(4):  # whatever the tie-break turn
        idle = [worker("a", held=HELD), worker("b")]
        assert run_cycle(profile, r, idle).ordered[0].worker == "a"
        short = [worker("a", held=HELD, queued_tokens=150), worker("b")]
        assert run_cycle(profile, r, short).ordered[0].worker == "a"
        long = [worker("a", held=HELD, queued_tokens=2000), worker("b")]
        assert run_cycle(profile, r, long).ordered[0].worker == "b"


def test_a_stream_already_open_on_the_holder_slows_it_but_keeps_the_bonus() -> None:
    # One open stream batches with the new request: it costs a token gap per step, not a
    # queue of tokens. (Counting it as 256 queued tokens, 2.56 s here, zeroed the bonus.)
    holder = worker("a", held=HELD, in_flight=1, inter_token_ms=20.0)
    other = worker("b", inter_token_ms=20.0)
    gain = prefix_gains(turn(), [holder, other], cycle())[holder]
    assert gain.net_ms == pytest.approx(SAVED_MS - 20.0)
    scores = PrefixScorer().score(turn(), [holder, other], cycle())
    assert scores[holder] > 0.9 * SHARE and scores[other] == 0.0


def test_prompts_being_prefilled_on_the_holder_count_as_queue() -> None:
    # 400 uncached prompt tokens this router sent the holder, not yet at their first
    # token: 800 ms of prefill ahead of this request, more than the ~780 ms it saves.
    holder, other = worker("a", held=HELD, prefilling_tokens=400), worker("b")
    assert PrefixScorer().score(turn(), [holder, other], cycle())[holder] == 0.0
    state = cycle()
    # Its prediction: the EWMA less the prefill it saves, plus the 800 ms queued there.
    predicted = predicted_ttft_ms(turn(), holder, [holder, other], state)
    assert predicted == pytest.approx(1000.0 - SAVED_MS + 800.0)


def test_a_holder_with_a_short_queue_predicts_better_than_a_full_prefill() -> None:
    # 200 prompt tokens prefilling on the holder: 400 ms ahead of the request, against
    # ~780 ms its prefix saves, so it answers first (~620 ms against 1,000). Charging the
    # queue twice (the net saving taken off, then the queue added) predicted ~1,020 and
    # the latency scorer sent the turn to the worker that must prefill all of it.
    holder, other = worker("a", held=HELD, prefilling_tokens=200), worker("b")
    state = cycle()
    assert predicted_ttft_ms(turn(), holder, [holder, other], state) == pytest.approx(
        1000.0 - SAVED_MS + 400.0
    )
    assert predicted_ttft_ms(turn(), other, [holder, other], state) == 1000.0
    profile = build_profiles()[common_pb2.OBJECTIVE_LATENCY]
    assert run_cycle(profile, turn(), [holder, other]).ordered[0] is holder


def test_a_queued_prompt_is_priced_at_the_prefill_rate() -> None:
    # A prompt-heavy worker outputs few tokens a second (16 a request here): pricing its
    # queue at that rate made one queued 100-token prompt ~30 s of wait and took the
    # bonus away. At its prefill rate it is 200 ms against ~780 ms saved.
    holder = worker("a", held=HELD, queued_tokens=100, tokens_per_second=3.2)
    other = worker("b", tokens_per_second=3.2)
    gain = prefix_gains(turn(), [holder, other], cycle())[holder]
    assert gain.net_ms == pytest.approx(SAVED_MS - 200.0)


def test_requests_this_router_sent_and_the_worker_queues_count_once() -> None:
    # The worker's queue and this router's prompts not at their first token are the same
    # 300 tokens when this router feeds it: 600 ms ahead, not 1,200.
    holder = worker("a", held=HELD, queued_tokens=300, prefilling_tokens=300)
    gain = prefix_gains(turn(), [holder, worker("b")], cycle())[holder]
    assert gain.net_ms == pytest.approx(SAVED_MS - 600.0)
    # Another router's queue on top of this one's prompts: the larger counts.
    holder = worker("a", held=HELD, queued_tokens=350, prefilling_tokens=100)
    gain = prefix_gains(turn(), [holder, worker("b")], cycle())[holder]
    assert gain.net_ms == pytest.approx(SAVED_MS - 700.0)


def test_concurrent_cold_requests_do_not_pile_onto_the_fastest_worker() -> None:
    # The shared-prompt bench's failure: a worker with the better TTFT record got every
    # request of a burst, because the prefills already sent there were invisible. Two
    # 400-token prompts sent there: 1,600 ms of prefill ahead, so 500 ms becomes ~2,100.
    fast_busy = worker("a", ttft_ms=500.0, prefilling_tokens=2 * PROMPT_TOKENS, in_flight=2)
    slow_idle = worker("b", ttft_ms=1500.0)
    profile = build_profiles()[common_pb2.OBJECTIVE_BALANCED]
    decision = run_cycle(profile, req(prompt_tokens=PROMPT_TOKENS), [fast_busy, slow_idle])
    assert decision.ordered[0] is slow_idle
    # With nothing queued there, the fast one still wins.
    fast_idle = worker("a", ttft_ms=500.0)
    decision = run_cycle(profile, req(prompt_tokens=PROMPT_TOKENS), [fast_idle, slow_idle])
    assert decision.ordered[0] is fast_idle


def test_uncached_prompt_tokens_leave_out_the_held_share() -> None:
    holder, other = worker("a", held=HELD), worker("b")
    assert uncached_prompt_tokens(turn(), other) == PROMPT_TOKENS
    assert uncached_prompt_tokens(turn(), holder) == round(PROMPT_TOKENS * (1 - SHARE))
    assert uncached_prompt_tokens(req(prompt_tokens=7), holder) == 7  # no chain: all of it
