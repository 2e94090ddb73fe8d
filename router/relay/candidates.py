"""One scheduling candidate: a (worker, model) pair with what the router knows of it at
this moment. The one constructor; router/relay/candidate_pool.py decides which to build."""

from __future__ import annotations

from collections import Counter

from modelyard.refs import ModelKey
from modelyard.v1 import model_pb2, worker_pb2
from router.accounting import Accounting
from router.scheduling.types import Candidate
from router.state.latency import Estimate
from router.state.prefix_history import PrefixHistory
from router.workers import WorkerHandle


def candidate_of(
    h: WorkerHandle,
    model: model_pb2.Model,
    key: ModelKey,
    acct: Accounting,
    in_flight: Counter[str],
    history: PrefixHistory,
) -> Candidate:
    status = h.status or _NO_STATUS
    breakers = acct.breakers
    address = h.address
    estimate = acct.latency.find(address, key) or _UNMEASURED
    published = h.prefix_sets.get(key)
    # Read from the status directly, not through the handle's accessors: the same
    # values, and a cycle builds a candidate per worker it looks at.
    return Candidate(
        worker=address,
        worker_id=status.worker_id,
        model=model,
        residency=h.residency_of(key),
        healthy=h.watching,
        breaker=breakers.state(address),
        breaker_allows=breakers.allows(address),
        queued_tokens=status.queued_tokens,
        running_sequences=status.running_sequences,
        in_flight=in_flight[address],
        memory_budget_bytes=status.memory_budget_bytes,
        memory_used_bytes=status.memory_used_bytes,
        ttft_ms=estimate.ttft_ms,
        inter_token_ms=estimate.inter_token_ms,
        prefill_ms_per_token=estimate.prefill_ms_per_token,
        tokens_per_second=status.tokens_per_second,
        prefix_held=published if published is not None else history.held_by(key, address),
        prefix_precise=published is not None,
        model_key=key,
    )


_UNMEASURED = Estimate()  # never written: only read when a pair has no estimate
_NO_STATUS = worker_pb2.WorkerStatus()  # a worker that has not reported: zeros
