"""Predictions about a candidate, shared by the filters and scorers: its time to first
token, and what a prefix it already holds is worth once its queue is paid for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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


class PrefixGain(NamedTuple):
    """What the prefix a candidate holds saves this request. A named tuple: one is built
    per scored candidate, and a frozen dataclass cost a microsecond per field."""

    share: float  # of the request's prefix bytes, in [0, 1]
    saved_ms: float  # the prefill of that share
    # saved_ms less the queue wait the candidate costs beyond the least loaded one,
    # never below 0: a prefix is worth at most the prefill it saves.
    net_ms: float


_NO_GAIN = PrefixGain(0.0, 0.0, 0.0)


def swap_ms(cand: Candidate) -> float:
    if not cand.needs_load:
        return 0.0
    return LOAD_BASE_MS + LOAD_MS_PER_GB * cand.model.resources.memory_bytes / _GB


def queue_wait_ms(cand: Candidate, prefill_ms_per_token: float) -> float:
    """What a new request waits for on this worker before its own prefill: the prompt
    work ahead of it at the worker's prefill rate, plus one token gap per stream this
    router has open there.

    The work ahead is the larger of the worker's queued tokens (every router's requests,
    from its pushed status, which lags) and the uncached prompt tokens this router sent
    it that are not at their first token yet (fresh, and without them concurrent
    requests sharing a cold prefix all went to one worker: the shared-prompt bench, TTFT
    p50 34x load-only's). Both count the same requests when one router feeds the
    worker, so the larger, not the sum. Queued tokens are priced at the prefill rate,
    not at the worker's recent output rate: on a prompt-heavy worker that rate is a few
    tokens a second, and a single queued 1,000-token prompt read as minutes of wait,
    taking every held prefix's bonus away. Running streams batch with the new request,
    so they slow its steps rather than block it: a token gap each."""
    itl = cand.inter_token_ms if cand.inter_token_ms is not None else PRIOR_INTER_TOKEN_MS
    ahead = max(cand.queued_tokens, cand.prefilling_tokens)
    return ahead * prefill_ms_per_token + cand.in_flight * itl


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
    # Nothing to hold: the same zeros, without the per-candidate work.
    gains = _held_gains(req, cands, cycle) if total else dict.fromkeys(cands, _NO_GAIN)
    cycle.data[_GAIN_KEY] = (cands, gains)
    return gains


def _held_gains(
    req: Request, cands: Sequence[Candidate], cycle: CycleState
) -> dict[Candidate, PrefixGain]:
    total = req.prefix.total_bytes
    means = _means(cands, cycle).prefill_ms_per_token
    waits = [queue_wait_ms(c, _per_token(c, means)) for c in cands]
    least = min(waits, default=0.0)
    gains: dict[Candidate, PrefixGain] = {}
    held, tokens = req.prefix.held, req.prompt_tokens
    for c, wait in zip(cands, waits, strict=True):
        held_bytes = held(c.prefix_held)[1]
        if not held_bytes:  # most candidates: nothing saved, nothing to net
            gains[c] = _NO_GAIN
            continue
        share = held_bytes / total
        saved = share * tokens * _per_token(c, means)
        gains[c] = PrefixGain(share, saved, max(0.0, saved - (wait - least)))
    return gains


def _per_token(cand: Candidate, means: dict[ModelKey, float]) -> float:
    """Prefill ms per prompt token: measured, else the model's mean, else the prior."""
    if cand.prefill_ms_per_token is not None:
        return cand.prefill_ms_per_token
    return means.get(cand.model_key, PRIOR_PREFILL_MS_PER_TOKEN)


class _Means(NamedTuple):
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


def predicted_ttft_ms(
    req: Request, cand: Candidate, cands: Sequence[Candidate], cycle: CycleState
) -> float:
    """EWMA TTFT (or the model's mean over measured workers, or a prior) less the
    prefill a held prefix saves, never below the prefill of the prompt tokens the
    candidate lacks (at its measured rate); plus the load time of a
    cold model, plus the queue wait ahead of the request there (`queue_wait_ms`)."""
    cache = _ttft_cache(cycle)
    value = cache.get(cand)
    if value is None:
        gain = prefix_gains(req, cands, cycle).get(cand)
        value = cache[cand] = _predict(req, cand, _means(cands, cycle), gain)
    return value


def predicted_ttfts(
    req: Request, cands: Sequence[Candidate], cycle: CycleState
) -> dict[Candidate, float]:
    """predicted_ttft_ms of each of `cands`, the shared tables looked up once."""
    cache = _ttft_cache(cycle)
    out: dict[Candidate, float] = {}
    tables: tuple[dict[Candidate, PrefixGain], _Means] | None = None
    for c in cands:
        value = cache.get(c)
        if value is None:
            if tables is None:
                tables = prefix_gains(req, cands, cycle), _means(cands, cycle)
            value = cache[c] = _predict(req, c, tables[1], tables[0].get(c))
        out[c] = value
    return out


def _ttft_cache(cycle: CycleState) -> dict[Candidate, float]:
    # Per candidate, first prediction wins: a filter's and the scorers' agree.
    cache = cycle.data.get(_TTFT_KEY)
    if cache is None:
        cache = cycle.data[_TTFT_KEY] = {}
    return cache  # type: ignore[return-value]


def _predict(req: Request, cand: Candidate, means: _Means, gain: PrefixGain | None) -> float:
    base = cand.ttft_ms
    if base is None:
        base = means.ttft_ms.get(cand.model_key, PRIOR_TTFT_MS)
    uncached = float(req.prompt_tokens)
    if gain is not None and gain.saved_ms > 0:
        # The whole saving: the holder's queue is added below, once. (Taking the net
        # saving here as well charged the holder its queue twice, so a holder with a
        # short queue predicted no better than a worker that must prefill everything.)
        base -= gain.saved_ms
        uncached = max(1.0, uncached * (1.0 - gain.share))
    per_token = _per_token(cand, means.prefill_ms_per_token)
    # No worker answers before it has prefilled what it lacks of this prompt. The EWMA
    # is of recent requests, mostly cached ones on a chat workload: alone, it priced a
    # cold 1,300-token history on a worker that lacked it like a cached turn, so turns
    # left their holder over a queue far shorter than the prefill the move cost.
    base = max(base, uncached * per_token)
    wait = queue_wait_ms(cand, per_token)
    return base + swap_ms(cand) + wait
