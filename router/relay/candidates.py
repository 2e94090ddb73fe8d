"""One scheduling candidate: a (worker, model) pair with what the router knows of it at
this moment. The one constructor; router/relay/candidate_pool.py decides which to build."""

from __future__ import annotations

from collections import Counter

from modelyard.refs import ModelKey
from modelyard.v1 import model_pb2
from router.accounting import Accounting
from router.scheduling.types import Candidate
from router.state.prefix_history import PrefixHistory
from router.workers import WorkerHandle


def candidate_of(
    h: WorkerHandle,
    model: model_pb2.Model,
    key: ModelKey,
    acct: Accounting,
    in_flight: Counter[str],
    history: PrefixHistory,
    prefilling: Counter[str],
) -> Candidate:
    status = h.status
    breakers = acct.breakers
    estimate = acct.latency.get(h.address, key)
    published = h.prefix_sets.get(key)
    return Candidate(
        worker=h.address,
        worker_id=h.worker_id,
        model=model,
        residency=h.residency_of(key),
        healthy=h.watching,
        breaker=breakers.state(h.address),
        breaker_allows=breakers.allows(h.address),
        queued_tokens=h.queued_tokens(),
        running_sequences=status.running_sequences if status else 0,
        in_flight=in_flight[h.address],
        prefilling_tokens=prefilling[h.address],
        memory_budget_bytes=status.memory_budget_bytes if status else 0,
        memory_used_bytes=status.memory_used_bytes if status else 0,
        ttft_ms=estimate.ttft_ms,
        inter_token_ms=estimate.inter_token_ms,
        prefill_ms_per_token=estimate.prefill_ms_per_token,
        tokens_per_second=h.tokens_per_second(),
        prefix_held=published if published is not None else history.held_by(key, h.address),
        prefix_precise=published is not None,
    )
