"""Next-token choice for the transformers engine's own decode loop (torch, any device).

Mirrors the contract's sampling: penalties first (repetition as in CTRL/HF,
presence and frequency as in OpenAI), then temperature, top-k, top-p, min-p.
Temperature 0 is greedy. The request's logit bias comes first, as in llama.cpp's chain,
and the output format's mask (`constrain`) after the penalties, as llama.cpp's grammar;
logprobs are the log-softmax of the raw logits, as OpenAI reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worker.engines.base import SamplingConfig, TokenLogprob, TopLogprob


def next_token(
    logits: Any,
    history: list[int],
    s: SamplingConfig,
    generator: Any,
    bias: Mapping[int, float] | None = None,
    constrain: Callable[[Any], None] | None = None,
) -> int:
    import torch

    logits = logits.float().clone()
    if bias:
        ids = torch.tensor(list(bias), device=logits.device)
        logits[ids] += torch.tensor(list(bias.values()), device=logits.device)
    if history and (
        s.repetition_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0
    ):
        ids, counts = torch.unique(torch.tensor(history, device=logits.device), return_counts=True)
        if s.repetition_penalty != 1.0:
            seen = logits[ids]
            logits[ids] = torch.where(
                seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty
            )
        logits[ids] -= s.presence_penalty + s.frequency_penalty * counts.to(logits.dtype)
    if constrain is not None:
        constrain(logits)  # in place: disallowed tokens to -inf
    if s.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    logits = logits / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always the first token).
        drop = sorted_probs.cumsum(-1) - sorted_probs > s.top_p
        probs[order[drop]] = 0.0
    if s.min_p > 0.0:
        probs[probs < s.min_p * probs.max()] = 0.0
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator).item())


def token_logprob(logits: Any, token: int, top: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
        alternatives = tuple(
            TopLogprob(int(t), piece(int(t)), float(v))
            for v, t in zip(values.tolist(), ids.tolist(), strict=True)
        )
    return TokenLogprob(token, piece(token), float(logprobs[token]), alternatives)
