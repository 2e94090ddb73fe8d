"""One llama.cpp sequence's sampler chain, with its output constraint, and its logprobs.

The chain mirrors llama-cpp-python's `Llama` (penalties, then the grammar, then
greedy at temperature 0 or top-k, top-p, min-p, temperature and a seeded draw), with
the request's logit bias in front, as llama.cpp's own server orders it. Samplers are
added only when asked for, so a plain greedy request samples exactly as `Llama` does.
The output's grammar (worker.engines.llama_grammar) masks the candidates first.
"""

from __future__ import annotations

import ctypes
import random
from typing import Any

import numpy as np

from worker.engines.base import EngineRequest, TokenLogprob, TopLogprob
from worker.engines.llama_grammar import Constraint, GrammarDeadEnd, GrammarPlan

PENALTY_LAST_N = 64  # as llama-cpp-python's Llama (last_n_tokens_size)


class SequenceSampler:
    """One sequence's chain, with its grammar (if any) applied apart, first.

    llama.cpp's own `llama_sampler_sample` with the grammar inside the chain draws a
    token even when the grammar rejects them all (a grammar whose language is empty,
    or that needs a character no token holds, such as NUL), then aborts the process
    accepting it. Here the grammar masks the candidates first; when none is left the
    sequence ends with GrammarDeadEnd instead. Otherwise this is `llama_sampler_sample`:
    the same candidates, the chain's pick, then both accept the token."""

    def __init__(self, chain: Any, grammar: Constraint | None, n_vocab: int) -> None:
        self._chain = chain  # llama_cpp._internals.LlamaSampler
        self._grammar = grammar
        self._n_vocab = n_vocab
        self._cur: Any = None  # candidates buffer, reused step to step

    def sample(self, ctx: Any, row: int) -> int:
        if self._grammar is None:
            return int(self._chain.sample(ctx, row))
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
        self._grammar.mask(cur, view["logit"])
        if not np.isfinite(view["logit"]).any():  # grammars mask with -inf
            raise GrammarDeadEnd
        llama_cpp.llama_sampler_apply(self._chain.sampler, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise RuntimeError(f"llama.cpp's sampler chain selected {cur.selected}")
        token = int(cur.data[cur.selected].id)
        llama_cpp.llama_sampler_accept(self._chain.sampler, token)
        self._grammar.accept(token)
        return token

    def close(self) -> None:
        self._chain.close()
        if self._grammar is not None:
            self._grammar.close()
            self._grammar = None


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def sampler_chain(n_vocab: int, req: EngineRequest, grammar: GrammarPlan | None) -> SequenceSampler:
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
    try:
        constraint = None if grammar is None else grammar.open()
    except BaseException:
        sampler.close()
        raise
    return SequenceSampler(sampler, constraint, n_vocab)


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
