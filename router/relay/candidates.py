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
    prefilling: Counter[str],
) -> Candidate:
    status = h.status or _NO_STATUS
    address = h.address
    breaker, allows = acct.breakers.verdict(address)
    estimate = acct.latency.find(address, key) or _UNMEASURED
    published = h.prefix_sets.get(key)
    # Read from the status directly, not through the handle's accessors: the same
    # values. Positional, in field order: keywords made the call three times slower,
    # and a cycle builds a candidate per worker it looks at (tests/unit/router/
    # test_candidate_of.py checks every field lands where it belongs).
    return Candidate(
        address,  # worker
        status.worker_id,
        model,
        h.residency_of(key),
        h.watching,  # healthy
        breaker,
        allows,
        status.queued_tokens,
        status.running_sequences,
        in_flight.get(address, 0),  # not [address]: Counter's __missing__ is a Python call
        prefilling.get(address, 0),  # prefilling_tokens
        status.memory_budget_bytes,
        status.memory_used_bytes,
        estimate.ttft_ms,
        estimate.inter_token_ms,
        estimate.prefill_ms_per_token,
        status.tokens_per_second,
        published if published is not None else history.held_by(key, address),  # prefix_held
        published is not None,  # prefix_precise
        key,  # model_key
    )


_UNMEASURED = Estimate()  # never written: only read when a pair has no estimate
_NO_STATUS = worker_pb2.WorkerStatus()  # a worker that has not reported: zeros
