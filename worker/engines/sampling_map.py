"""EngineRequest sampling -> vLLM SamplingParams (streamed as deltas)."""

from __future__ import annotations

from typing import Any

from worker.engines.base import EngineRequest


def vllm_sampling_params(req: EngineRequest, max_tokens: int) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = req.sampling
    return SamplingParams(
        temperature=s.temperature,  # 0 is greedy in vLLM too
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else 0,  # 0 (or -1) disables it
        min_p=s.min_p,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        seed=s.seed,
        stop=list(req.stop) or None,
        max_tokens=max_tokens,
        output_kind=RequestOutputKind.DELTA,
        # Our contract (as llama.cpp's engine) leaves the stop string out of the text.
        include_stop_str_in_output=False,
    )
