"""One llama.cpp sequence's sampler chain, its output constraints, and its logprobs.

The chain mirrors llama-cpp-python's `Llama` (penalties, then the grammar, then
greedy at temperature 0 or top-k, top-p, min-p, temperature and a seeded draw), with
the request's logit bias in front, as llama.cpp's own server orders it. Samplers are
added only when asked for, so a plain greedy request samples exactly as `Llama` does.

Structured output is llama.cpp's grammar sampler: a JSON Schema becomes GBNF through
llama-cpp-python's converter, a plain JSON object uses its JSON grammar, a regex becomes
GBNF through worker.engines.regex_gbnf, and a GBNF grammar is taken as it is. Each is
compiled once on the event loop before the request is queued (`check_request`), so a
format llama.cpp cannot enforce is INVALID_ARGUMENT naming its field, never a failed
decode step. Lark grammars are refused: llama.cpp reads GBNF only.
"""

from __future__ import annotations

import logging
import random
import re
from typing import Any

import numpy as np

from modelyard.errors import InvalidArgument
from worker.engines.base import EngineRequest, OutputFormat, TokenLogprob, TopLogprob
from worker.engines.common import check_logit_bias
from worker.engines.regex_gbnf import RegexNotSupported, regex_to_gbnf

log = logging.getLogger(__name__)

PENALTY_LAST_N = 64  # as llama-cpp-python's Llama (last_n_tokens_size)
SCHEMA_FIELD = "sampling.response_format.json_schema"
# llama.cpp's grammar stack grows with the grammar; a regex's GBNF is linear in the
# pattern (16 KiB at most), this bounds what reaches the parser all the same.
MAX_GBNF_CHARS = 256 * 1024


def grammar_of(fmt: OutputFormat) -> str:
    """GBNF text for the format (INVALID_ARGUMENT naming the field when it cannot be
    converted)."""
    if fmt.grammar is not None:
        if fmt.grammar_syntax != "gbnf":
            raise InvalidArgument.for_field(
                "sampling.response_format.grammar_syntax",
                "engine llama_cpp reads GBNF grammars only; Lark needs engine vllm or transformers",
            )
        return fmt.grammar
    if fmt.regex is not None:
        return _regex_grammar(fmt.regex)
    return _json_grammar(fmt)


def _json_grammar(fmt: OutputFormat) -> str:
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt.json_schema is None:
        return JSON_GBNF
    try:
        gbnf = str(json_schema_to_gbnf(fmt.json_schema))
    except Exception as err:  # the converter raises bare asserts and ValueErrors
        log.info("JSON Schema not convertible to a grammar: %s", err)
        raise InvalidArgument.for_field(
            SCHEMA_FIELD,
            "llama.cpp cannot enforce this JSON Schema (supported: type, properties, "
            "required, items, enum, const, anyOf/oneOf/allOf, local $ref, pattern, "
            "min/max lengths and items)",
        ) from None
    # llama-cpp-python's converter lets raw control characters into strings, which JSON
    # forbids (a sampled newline made invalid JSON); llama.cpp's own JSON grammar and
    # converter exclude them, as this does.
    return _LAX_CHAR.sub(lambda m: m[1] + _STRICT_CHAR, gbnf)


_LAX_CHAR = re.compile(r'^(char ::= )\[\^"\\\\\] \|', re.MULTILINE)
_STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] |'  # GBNF text, as in llama.cpp's json-schema-to-grammar


def _regex_grammar(pattern: str) -> str:
    field = "sampling.response_format.regex"
    try:
        gbnf = regex_to_gbnf(pattern)
    except RegexNotSupported as err:
        raise InvalidArgument.for_field(
            field, f"llama.cpp cannot enforce this pattern: {err}"
        ) from None
    except (re.error, RecursionError):
        raise InvalidArgument.for_field(field, "is not a valid regular expression") from None
    if len(gbnf) > MAX_GBNF_CHARS:
        raise InvalidArgument.for_field(field, "is too large to enforce")
    return gbnf


_NOT_COMPILED = {
    "sampling.response_format.grammar": (
        "llama.cpp cannot compile this grammar (GBNF with start rule root, no left "
        "recursion, repetition counts at most 2000)"
    ),
    "sampling.response_format.regex": (
        "llama.cpp cannot compile this pattern (repetition counts are at most 2000)"
    ),
    "": "llama.cpp cannot compile this schema",
}


def _grammar_sampler(vocab: Any, gbnf: str, field: str) -> Any:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:  # llama.cpp logs the parse error and returns NULL
        raise InvalidArgument.for_field(field, _NOT_COMPILED.get(field, _NOT_COMPILED[""]))
    return sampler


def check_request(vocab: Any, n_vocab: int, req: EngineRequest) -> str | None:
    """On the event loop, before queueing: the bias's token ids and the grammar.

    Returns the grammar (GBNF) the sequence's chain will use, if any."""
    check_logit_bias(req, n_vocab)
    if req.output_format is None:
        return None
    import llama_cpp

    gbnf = grammar_of(req.output_format)
    compiled = _grammar_sampler(vocab, gbnf, req.output_format.field)
    llama_cpp.llama_sampler_free(compiled)  # compiles: then it will again
    return gbnf


class GrammarDeadEnd(Exception):
    """No token can continue the output under the sequence's grammar."""


class SequenceSampler:
    """One sequence's chain, with its grammar (if any) applied apart, first.

    llama.cpp's own `llama_sampler_sample` with the grammar inside the chain draws a
    token even when the grammar rejects them all (a grammar whose language is empty,
    or that needs a character no token holds, such as NUL), then aborts the process
    accepting it. Here the grammar masks the candidates first; when none is left the
    sequence ends with GrammarDeadEnd instead. Otherwise this is `llama_sampler_sample`:
    the same candidates, the chain's pick, then both samplers accept the token."""

    def __init__(self, chain: Any, grammar: Any, n_vocab: int) -> None:
        self._chain = chain  # llama_cpp._internals.LlamaSampler
        self._grammar = grammar  # a llama_sampler pointer, or None
        self._n_vocab = n_vocab
        self._cur: Any = None  # candidates buffer, reused step to step

    def sample(self, ctx: Any, row: int) -> int:
        if self._grammar is None:
            return int(self._chain.sample(ctx, row))
        import ctypes

        import llama_cpp

        n = self._n_vocab
        if self._cur is None:
            self._cur = (llama_cpp.llama_token_data * n)()
        view = np.ctypeslib.as_array(self._cur).view(_TOKEN_DATA)
        view["id"] = np.arange(n, dtype=np.int32)
        view["logit"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, row), (n,))
        view["p"] = 0.0
        data = ctypes.cast(self._cur, llama_cpp.llama_token_data_p)
        cur = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur))
        if not np.isfinite(view["logit"]).any():  # the grammar masks with -inf
            raise GrammarDeadEnd
        llama_cpp.llama_sampler_apply(self._chain.sampler, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise RuntimeError(f"llama.cpp's sampler chain selected {cur.selected}")
        token = int(cur.data[cur.selected].id)
        llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        self._chain.close()
        if self._grammar is not None:
            import llama_cpp

            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def sampler_chain(
    vocab: Any, n_vocab: int, req: EngineRequest, gbnf: str | None
) -> SequenceSampler:
    """A new sampler for one sequence (the caller closes it)."""
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
    if s.temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(s.top_k)
        sampler.add_top_p(s.top_p, 1)
        sampler.add_min_p(s.min_p, 1)
        sampler.add_temp(s.temperature)
        seed = s.seed if s.seed is not None else random.getrandbits(32)
        sampler.add_dist(seed & 0xFFFFFFFF)  # llama.cpp samplers take a 32-bit seed
    field = req.output_format.field if req.output_format else SCHEMA_FIELD
    grammar = None if gbnf is None else _grammar_sampler(vocab, gbnf, field)
    return SequenceSampler(sampler, grammar, n_vocab)


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
