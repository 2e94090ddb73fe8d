"""candidate_of builds a Candidate positionally (for speed): every field must come from
its own source. Each source here gives a value no other field has."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from modelyard.prefix import SCHEME
from modelyard.refs import key_of
from modelyard.v1 import model_pb2, router_pb2, worker_pb2
from router.accounting import Accounting
from router.breaker import BreakerBoard
from router.relay.candidates import candidate_of
from router.state.latency import LatencyEstimates
from router.state.prefix_history import PrefixHistory
from router.stats import RoutingStats
from router.workers import WorkerPool

MODEL = model_pb2.Model(name="m", version="1")
KEY = key_of(MODEL)


class _Channel:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _handle(address: str = "10.0.0.1:7000") -> Any:
    return WorkerPool([address], connect=lambda a: cast(Any, _Channel())).workers[0]


def test_every_field_comes_from_its_source() -> None:
    h = _handle()
    h.set_status(
        worker_pb2.WorkerStatus(
            worker_id="w-one",
            sequence=1,
            queued_tokens=11,
            running_sequences=22,
            memory_budget_bytes=33,
            memory_used_bytes=44,
            tokens_per_second=55.5,
            models=[
                worker_pb2.ModelStatus(
                    name="m",
                    version="1",
                    state=worker_pb2.RESIDENCY_STATE_LOADING,
                    prefix_cache=worker_pb2.PrefixCacheSummary(scheme=SCHEME, link_hashes=[7]),
                )
            ],
        )
    )
    h.watching = True
    breakers = BreakerBoard()
    breakers.eject(h.address)  # open: state OPEN, allows False
    acct = Accounting(breakers, LatencyEstimates(), RoutingStats())
    acct.latency.observe(
        h.address, KEY, ttft_ms=66.0, inter_token_ms=77.0, prefill_ms_per_token=0.88
    )
    prefilling = Counter({h.address: 300})
    c = candidate_of(h, MODEL, KEY, acct, Counter({h.address: 9}), PrefixHistory(), prefilling)
    assert (c.worker, c.worker_id, c.model, c.model_key) == (h.address, "w-one", MODEL, KEY)
    assert c.residency == worker_pb2.RESIDENCY_STATE_LOADING
    assert c.healthy is True
    assert c.breaker == router_pb2.BREAKER_STATE_OPEN and c.breaker_allows is False
    assert (c.queued_tokens, c.running_sequences, c.in_flight) == (11, 22, 9)
    assert c.prefilling_tokens == 300
    assert (c.memory_budget_bytes, c.memory_used_bytes) == (33, 44)
    assert (c.ttft_ms, c.inter_token_ms, c.prefill_ms_per_token) == (66.0, 77.0, 0.88)
    assert c.tokens_per_second == 55.5
    assert set(c.prefix_held) == {7} and c.prefix_precise is True


def test_a_worker_that_has_not_reported_is_all_zeros_and_history_guesses() -> None:
    h = _handle()
    history = PrefixHistory()
    acct = Accounting(BreakerBoard(), LatencyEstimates(), RoutingStats())
    c = candidate_of(h, MODEL, KEY, acct, Counter(), history, Counter())
    assert (c.worker_id, c.queued_tokens, c.memory_budget_bytes, c.tokens_per_second) == (
        "",
        0,
        0,
        0.0,
    )
    assert c.residency == worker_pb2.RESIDENCY_STATE_UNSPECIFIED and not c.healthy
    assert c.breaker == router_pb2.BREAKER_STATE_CLOSED and c.breaker_allows
    assert c.ttft_ms is None and c.inter_token_ms is None and c.prefill_ms_per_token is None
    assert c.prefix_precise is False and 5 not in c.prefix_held
    assert c.prefilling_tokens == 0
