"""EngineRequest sampling -> vLLM SamplingParams (streamed as deltas), and vLLM's
logprobs -> ours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.errors import InvalidArgument
from modelyard.validation import looks_like_gbnf
from worker.engines.base import EngineRequest, TokenLogprob, TopLogprob


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
        # vLLM's default logprobs mode is the raw logits' log-softmax, as OpenAI's.
        logprobs=req.logprobs,
        logit_bias=dict(req.logit_bias) or None,
        structured_outputs=_structured(req),
    )


def _structured(req: EngineRequest) -> Any:
    """vLLM's structured outputs (xgrammar or llguidance, as the engine is configured)."""
    if req.output_format is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    fmt = req.output_format
    if fmt.regex is not None:
        return StructuredOutputsParams(regex=fmt.regex)
    if fmt.grammar is not None:
        # vLLM is not told the syntax: it reads a grammar defining a rule with `::=` as
        # GBNF (EBNF), any other as Lark. Refuse where that would misread ours.
        if (fmt.grammar_syntax == "gbnf") != looks_like_gbnf(fmt.grammar):
            raise InvalidArgument.for_field(
                "sampling.response_format.grammar",
                f"vLLM reads a grammar with '::=' as GBNF and one without as Lark; this "
                f"{fmt.grammar_syntax.upper()} grammar would be misread",
            )
        return StructuredOutputsParams(grammar=fmt.grammar)
    # JSON without free whitespace: with it, a sampling model can spend its whole budget
    # on blanks between tokens (seen at temperature 1: 200 tokens of newlines, LENGTH).
    if fmt.json_schema is None:
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    return StructuredOutputsParams(json=fmt.json_schema, disable_any_whitespace=True)


def vllm_logprobs(
    tokens: Sequence[int], entries: Sequence[Any] | None, top: int | None
) -> tuple[TokenLogprob, ...]:
    """One TokenLogprob per token from a delta's logprobs (a dict per token: token id ->
    Logprob(logprob, rank, decoded_token), the top-k and the sampled token)."""
    if top is None or not entries:
        return ()
    out: list[TokenLogprob] = []
    for token, alternatives in zip(tokens, entries, strict=False):
        ranked = sorted(alternatives.items(), key=lambda kv: kv[1].rank or 0)[:top]
        chosen = alternatives[token]
        out.append(
            TokenLogprob(
                token,
                _text(chosen),
                float(chosen.logprob),
                tuple(TopLogprob(int(t), _text(lp), float(lp.logprob)) for t, lp in ranked),
            )
        )
    return tuple(out)


def _text(logprob: Any) -> bytes:
    # vLLM gives the token's decoded text; a partial UTF-8 character shows as U+FFFD.
    return str(logprob.decoded_token or "").encode("utf-8")
