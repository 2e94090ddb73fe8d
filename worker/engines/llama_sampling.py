"""One llama.cpp sequence's sampler chain, its output constraints, and its logprobs.

The chain mirrors llama-cpp-python's `Llama` (penalties, then the grammar, then
greedy at temperature 0 or top-k, top-p, min-p, temperature and a seeded draw), with
the request's logit bias in front, as llama.cpp's own server orders it. Samplers are
added only when asked for, so a plain greedy request samples exactly as `Llama` does.

Structured output is llama.cpp's grammar sampler: a JSON Schema becomes GBNF through
llama-cpp-python's converter, a plain JSON object uses its JSON grammar. Both are
compiled once on the event loop before the request is queued (`check_request`), so a
schema llama.cpp cannot enforce is INVALID_ARGUMENT, never a failed decode step.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np

from modelyard.errors import InvalidArgument
from worker.engines.base import EngineRequest, OutputFormat, TokenLogprob, TopLogprob
from worker.engines.common import check_logit_bias

log = logging.getLogger(__name__)

PENALTY_LAST_N = 64  # as llama-cpp-python's Llama (last_n_tokens_size)
SCHEMA_FIELD = "sampling.response_format.json_schema"


def grammar_of(fmt: OutputFormat) -> str:
    """GBNF text for the format (INVALID_ARGUMENT when the schema cannot be converted)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt.json_schema is None:
        return JSON_GBNF
    try:
        return str(json_schema_to_gbnf(fmt.json_schema))
    except Exception as err:  # the converter raises bare asserts and ValueErrors
        log.info("JSON Schema not convertible to a grammar: %s", err)
        raise InvalidArgument.for_field(
            SCHEMA_FIELD,
            "llama.cpp cannot enforce this JSON Schema (supported: type, properties, "
            "required, items, enum, const, anyOf/oneOf/allOf, local $ref, pattern, "
            "min/max lengths and items)",
        ) from None


def _grammar_sampler(vocab: Any, gbnf: str) -> Any:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:  # llama.cpp logs the parse error and returns NULL
        raise InvalidArgument.for_field(SCHEMA_FIELD, "llama.cpp cannot compile this schema")
    return sampler


def check_request(vocab: Any, n_vocab: int, req: EngineRequest) -> str | None:
    """On the event loop, before queueing: the bias's token ids and the grammar.

    Returns the grammar (GBNF) the sequence's chain will use, if any."""
    check_logit_bias(req, n_vocab)
    if req.output_format is None:
        return None
    import llama_cpp

    gbnf = grammar_of(req.output_format)
    llama_cpp.llama_sampler_free(_grammar_sampler(vocab, gbnf))  # compiles: then it will again
    return gbnf


def sampler_chain(vocab: Any, n_vocab: int, req: EngineRequest, gbnf: str | None) -> Any:
    """A new chain for one sequence (the caller closes it)."""
    import llama_cpp
    from llama_cpp._internals import LlamaSampler

    s = req.sampling
    sampler: Any = LlamaSampler()  # type: ignore[no-untyped-call]
    if req.logit_bias:
        sampler.add_logit_bias(n_vocab, dict(req.logit_bias))
    sampler.add_penalties(
        n_vocab,
        PENALTY_LAST_N,
        s.repetition_penalty,
        s.frequency_penalty,
        s.presence_penalty,
    )
    if gbnf is not None:
        llama_cpp.llama_sampler_chain_add(sampler.sampler, _grammar_sampler(vocab, gbnf))
    if s.temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(s.top_k)
        sampler.add_top_p(s.top_p, 1)
        sampler.add_min_p(s.min_p, 1)
        sampler.add_temp(s.temperature)
        seed = s.seed if s.seed is not None else random.getrandbits(32)
        sampler.add_dist(seed & 0xFFFFFFFF)  # llama.cpp samplers take a 32-bit seed
    return sampler


def token_logprob(model: Any, ctx: Any, row: int, token: int, top: int) -> TokenLogprob:
    """The log-softmax of the raw logits of batch row `row` (as OpenAI and llama-cpp-python
    report them: before bias, penalties, temperature and truncation), for `token` and the
    `top` most likely tokens."""
    import llama_cpp

    n_vocab = int(model.n_vocab())
    raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, row), shape=(n_vocab,))
    logits = raw.astype(np.float64)
    shifted = logits - logits.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(-logprobs, top - 1)[:top]
        ranked = sorted(best.tolist(), key=lambda t: (-logprobs[t], t))
        alternatives = tuple(TopLogprob(t, _piece(model, t), float(logprobs[t])) for t in ranked)
    return TokenLogprob(token, _piece(model, token), float(logprobs[token]), alternatives)


def _piece(model: Any, token: int) -> bytes:
    return bytes(model.detokenize([token], special=True))
