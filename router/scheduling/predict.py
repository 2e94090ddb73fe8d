"""Predictions about a candidate, shared by the filters and scorers: its time to first
token, and what a prefix it already holds is worth once its queue is paid for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.refs import ModelKey
from router.scheduling.types import Candidate, CycleState, Request

# Before any measurement: an optimistic prior, so unmeasured workers get tried.
PRIOR_TTFT_MS = 200.0
PRIOR_INTER_TOKEN_MS = 30.0
# Prefill per prompt token before a worker's is measured: a middling CPU figure, so a
# cached prefix counts for something from the first request on.
PRIOR_PREFILL_MS_PER_TOKEN = 1.0
# Load-time estimate for a model that is not in memory: fixed setup plus reading
# its weights at ~1 GB/s (an SSD or page-cached artifact).
LOAD_BASE_MS = 500.0
LOAD_MS_PER_GB = 1000.0
_GB = 1 << 30
_TTFT_KEY = "predict.ttft_ms"
_GAIN_KEY = "predict.prefix_gain"
_MEANS_KEY = "predict.model_means"


@dataclass(frozen=True)
class PrefixGain:
    """What the prefix a candidate holds saves this request."""

    share: float  # of the request's prefix bytes, in [0, 1]
    saved_ms: float  # the prefill of that share
    # saved_ms less the queue wait the candidate costs beyond the least loaded one,
    # never below 0: a prefix is worth at most the prefill it saves.
    net_ms: float


def swap_ms(cand: Candidate) -> float:
    if not cand.needs_load:
        return 0.0
    return LOAD_BASE_MS + LOAD_MS_PER_GB * cand.model.resources.memory_bytes / _GB


def queue_wait_ms(cand: Candidate, prefill_ms_per_token: float = 0.0) -> float:
    """What a new request waits for on this worker before its prefill: the tokens queued
    ahead of it (its pushed status) at its recent throughput, plus one token gap per
    stream this router has open there, plus the prompts this router sent it that are not
    at their first token yet (`prefill_ms_per_token` each). Running streams batch with the
    new one, so they slow its steps rather than block it: counting each as a queue of
    tokens made one extra open stream outweigh any held prefix. Prompts being prefilled
    do take the compute a new prefill needs: without them, concurrent requests sharing a
    cold prefix all went to the same worker (the shared-prompt bench: every request to
    one of two workers, TTFT p50 34x load-only's)."""
    itl = cand.inter_token_ms if cand.inter_token_ms is not None else PRIOR_INTER_TOKEN_MS
    ms_per_token = 1000.0 / cand.tokens_per_second if cand.tokens_per_second > 0 else itl
    pending = cand.prefilling_tokens * prefill_ms_per_token
    return cand.queued_tokens * ms_per_token + cand.in_flight * itl + pending


def uncached_prompt_tokens(req: Request, cand: Candidate) -> int:
    """The prompt tokens `cand` will evaluate for `req`: those its held prefix lacks."""
    total = req.prefix.total_bytes
    if not total or not req.prompt_tokens:
        return req.prompt_tokens
    held_bytes = req.prefix.held(cand.prefix_held)[1]
    return max(1, round(req.prompt_tokens * (1.0 - held_bytes / total)))


def prefix_gains(
    req: Request, cands: Sequence[Candidate], cycle: CycleState
) -> dict[Candidate, PrefixGain]:
    # Keyed by the list it was computed for: every candidate asks with the same list, and
    # checking membership per call made a cycle quadratic in the pool.
    cached = cycle.data.get(_GAIN_KEY)
    if isinstance(cached, tuple):
        for_cands, gains_of = cached
        if for_cands is cands or all(c in gains_of for c in cands):
            cycle.data[_GAIN_KEY] = (cands, gains_of)
            return gains_of  # type: ignore[no-any-return]
    total = req.prefix.total_bytes
    means = _means(cands, cycle)
    waits = {c: queue_wait_ms(c, _prefill_ms_per_token(c, means)) for c in cands}
    least = min(waits.values(), default=0.0)
    gains: dict[Candidate, PrefixGain] = {}
    for c in cands:
        held_bytes = req.prefix.held(c.prefix_held)[1] if total else 0
        share = held_bytes / total if total else 0.0
        saved = share * req.prompt_tokens * _prefill_ms_per_token(c, means)
        gains[c] = PrefixGain(share, saved, max(0.0, saved - (waits[c] - least)))
    cycle.data[_GAIN_KEY] = (cands, gains)
    return gains


@dataclass(frozen=True)
class _Means:
    """Per model, the mean measured TTFT and prefill per token over one candidate list."""

    ttft_ms: dict[ModelKey, float]
    prefill_ms_per_token: dict[ModelKey, float]


def _means(cands: Sequence[Candidate], cycle: CycleState) -> _Means:
    # Once per list, not once per candidate (that was quadratic in the pool).
    cached = cycle.data.get(_MEANS_KEY)
    if isinstance(cached, tuple) and cached[0] is cands:
        return cached[1]  # type: ignore[no-any-return]
    ttft: dict[ModelKey, list[float]] = {}
    prefill: dict[ModelKey, list[float]] = {}
    for c in cands:
        if c.ttft_ms is not None:
            ttft.setdefault(c.model_key, []).append(c.ttft_ms)
        if c.prefill_ms_per_token is not None:
            prefill.setdefault(c.model_key, []).append(c.prefill_ms_per_token)
    means = _Means(
        {k: sum(v) / len(v) for k, v in ttft.items()},
        {k: sum(v) / len(v) for k, v in prefill.items()},
    )
    cycle.data[_MEANS_KEY] = (cands, means)
    return means


def _prefill_ms_per_token(cand: Candidate, means: _Means) -> float:
    if cand.prefill_ms_per_token is not None:
        return cand.prefill_ms_per_token
    return means.prefill_ms_per_token.get(cand.model_key, PRIOR_PREFILL_MS_PER_TOKEN)


def predicted_ttft_ms(
    req: Request, cand: Candidate, cands: Sequence[Candidate], cycle: CycleState
) -> float:
    """EWMA TTFT (or the model's mean over measured workers, or a prior) less the
    prefill a held prefix saves, net of its extra queue wait (but never below the
    uncached share of the EWMA), plus the load time of a cold model, plus one
    inter-token gap per stream this router already has open on the worker (their
    decode steps share its compute), plus the prefill of the prompts it sent there
    that are not at their first token yet."""
    cache = cycle.data.setdefault(_TTFT_KEY, {})
    assert isinstance(cache, dict)
    if cand in cache:
        return float(cache[cand])
    base = cand.ttft_ms
    if base is None:
        base = _means(cands, cycle).ttft_ms.get(cand.model_key, PRIOR_TTFT_MS)
    gain = prefix_gains(req, cands, cycle).get(cand)
    if gain is not None and gain.net_ms > 0:
        base = max(base - gain.net_ms, base * (1.0 - gain.share))
    itl = cand.inter_token_ms if cand.inter_token_ms is not None else PRIOR_INTER_TOKEN_MS
    pending = cand.prefilling_tokens * _prefill_ms_per_token(cand, _means(cands, cycle))
    value = base + swap_ms(cand) + cand.in_flight * itl + pending
    cache[cand] = value
    return value
