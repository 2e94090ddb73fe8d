"""Per (worker, model) EWMAs of time to first token, inter-token latency and prefill
time per uncached prompt token."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from modelyard.refs import ModelKey
from modelyard.v1 import common_pb2

# Weight of the newest sample: ~10 samples of memory, so a worker that slows down
# is noticed within a few requests.
ALPHA = 0.2
MAX_PAIRS = 4096
# Fewer evaluated prompt tokens than this say more about a step's fixed cost than
# about prefill speed: such requests teach no per-token estimate.
MIN_PREFILL_SAMPLE_TOKENS = 64


@dataclass
class Estimate:
    ttft_ms: float | None = None
    inter_token_ms: float | None = None
    prefill_ms_per_token: float | None = None


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


def prefill_ms_per_token(finished: common_pb2.GenerationFinished) -> float | None:
    """One sample of prefill time per evaluated (uncached) prompt token, from the
    worker's timings: its TTFT less queue wait and model load."""
    timings, usage = finished.timings, finished.usage
    evaluated = usage.input_tokens - usage.cached_input_tokens
    prefill_ms = timings.ttft_ms - timings.queue_ms - timings.load_ms
    if evaluated < MIN_PREFILL_SAMPLE_TOKENS or prefill_ms <= 0:
        return None
    return prefill_ms / evaluated


class LatencyEstimates:
    def __init__(self, alpha: float = ALPHA, max_pairs: int = MAX_PAIRS) -> None:
        self._alpha = alpha
        self._max = max_pairs
        self._pairs: OrderedDict[tuple[str, ModelKey], Estimate] = OrderedDict()

    def get(self, worker: str, model: ModelKey) -> Estimate:
        return self._pairs.get((worker, model)) or Estimate()

    def find(self, worker: str, model: ModelKey) -> Estimate | None:
        """The pair's estimate, None if never measured: no empty one built (the
        scheduler asks once per candidate). Read it, do not keep it."""
        return self._pairs.get((worker, model))

    def observe(
        self,
        worker: str,
        model: ModelKey,
        *,
        ttft_ms: float | None = None,
        inter_token_ms: float | None = None,
        prefill_ms_per_token: float | None = None,
    ) -> None:
        key = (worker, model)
        estimate = self._pairs.get(key)
        if estimate is None:
            estimate = self._pairs[key] = Estimate()
            if len(self._pairs) > self._max:
                self._pairs.popitem(last=False)  # least recently observed
        else:
            self._pairs.move_to_end(key)
        if ttft_ms is not None:
            estimate.ttft_ms = _ewma(estimate.ttft_ms, ttft_ms, self._alpha)
        if inter_token_ms is not None:
            estimate.inter_token_ms = _ewma(estimate.inter_token_ms, inter_token_ms, self._alpha)
        if prefill_ms_per_token is not None:
            estimate.prefill_ms_per_token = _ewma(
                estimate.prefill_ms_per_token, prefill_ms_per_token, self._alpha
            )
