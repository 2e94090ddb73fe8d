"""Per (worker, model) EWMAs of time to first token and inter-token latency."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from modelyard.refs import ModelKey

# Weight of the newest sample: ~10 samples of memory, so a worker that slows down
# is noticed within a few requests.
ALPHA = 0.2
MAX_PAIRS = 4096


@dataclass
class Estimate:
    ttft_ms: float | None = None
    inter_token_ms: float | None = None


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


class LatencyEstimates:
    def __init__(self, alpha: float = ALPHA, max_pairs: int = MAX_PAIRS) -> None:
        self._alpha = alpha
        self._max = max_pairs
        self._pairs: OrderedDict[tuple[str, ModelKey], Estimate] = OrderedDict()

    def get(self, worker: str, model: ModelKey) -> Estimate:
        return self._pairs.get((worker, model)) or Estimate()

    def observe(
        self,
        worker: str,
        model: ModelKey,
        *,
        ttft_ms: float | None = None,
        inter_token_ms: float | None = None,
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
