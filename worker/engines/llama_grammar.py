"""What a llama.cpp sequence's output must match, compiled before it is queued.

A JSON Schema becomes GBNF through llama-cpp-python's converter, a plain JSON object uses
its JSON grammar, a regex becomes GBNF through worker.engines.regex_gbnf, and a GBNF
grammar is taken as it is: all four run in llama.cpp's own grammar sampler. A Lark
grammar runs in llguidance (the library vLLM uses), over a tokenizer built once per loaded
model from llama.cpp's vocabulary. `GrammarCompiler.compile` checks a format once, off the
event loop, so one the engine cannot enforce is INVALID_ARGUMENT naming its field, never a
failed decode step; it returns a plan that opens one `Constraint` per sequence.

A constraint masks the candidates before the sampler chain draws (disallowed logits to
-inf) and then accepts the drawn token. When it leaves no candidate the sequence ends with
`GrammarDeadEnd`: llama.cpp's own sampler would draw a token anyway and abort the process
accepting it.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelyard.errors import InvalidArgument
from worker.engines.base import EngineRequest, OutputFormat
from worker.engines.regex_gbnf import RegexNotSupported, regex_to_gbnf

log = logging.getLogger(__name__)

SCHEMA_FIELD = "sampling.response_format.json_schema"
GRAMMAR_FIELD = "sampling.response_format.grammar"
# llama.cpp's grammar stack grows with the grammar; a regex's GBNF is linear in the
# pattern (16 KiB at most), this bounds what reaches the parser all the same.
MAX_GBNF_CHARS = 256 * 1024
MAX_REASON_CHARS = 200


class GrammarDeadEnd(Exception):
    """No token can continue the output under the sequence's grammar."""


def dead_end(req: EngineRequest) -> InvalidArgument:
    """The error a sequence that met GrammarDeadEnd ends with."""
    field = req.output_format.field if req.output_format else "sampling.response_format"
    return InvalidArgument.for_field(
        field, "no token can continue the output here: the format admits no next character"
    )


class Constraint(Protocol):
    """One sequence's grammar state (used on the decode thread only)."""

    def mask(self, candidates: Any, logits: np.ndarray) -> None:
        """Disallowed candidates' logits to -inf, in place (`candidates`: llama.cpp's
        token data array over the whole vocabulary; `logits`: a view of its logits)."""

    def accept(self, token: int) -> None: ...

    def close(self) -> None: ...


class GrammarPlan(Protocol):
    """A compiled format: opens one constraint per sequence."""

    def open(self) -> Constraint: ...


def grammar_of(fmt: OutputFormat) -> str:
    """GBNF text for a format llama.cpp's sampler enforces (INVALID_ARGUMENT naming the
    field when it cannot be converted)."""
    if fmt.grammar is not None:
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
    GRAMMAR_FIELD: (
        "llama.cpp cannot compile this grammar (GBNF with start rule root, no left "
        "recursion, repetition counts at most 2000)"
    ),
    "sampling.response_format.regex": (
        "llama.cpp cannot compile this pattern (repetition counts are at most 2000)"
    ),
    "": "llama.cpp cannot compile this schema",
}


@dataclass(frozen=True)
class GbnfPlan:
    vocab: Any  # llama_vocab pointer of the loaded model
    gbnf: str
    field: str

    def open(self) -> GbnfConstraint:
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, self.gbnf.encode(), b"root")
        if not sampler:  # llama.cpp logs the parse error and returns NULL
            raise InvalidArgument.for_field(
                self.field, _NOT_COMPILED.get(self.field, _NOT_COMPILED[""])
            )
        return GbnfConstraint(sampler)


class GbnfConstraint:
    """llama.cpp's grammar sampler, applied apart from the chain."""

    def __init__(self, sampler: Any) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._sampler = sampler

    def mask(self, candidates: Any, logits: np.ndarray) -> None:
        self._llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(candidates))

    def accept(self, token: int) -> None:
        self._llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler is not None:
            self._llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None


@dataclass(frozen=True)
class LarkPlan:
    tokenizer: Any  # llguidance.LLTokenizer over the model's vocabulary
    grammar: str  # llguidance's grammar text, validated
    n_vocab: int

    def open(self) -> LarkConstraint:
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0)
        if matcher.is_error():  # validated before queueing: a resource limit at most
            raise InvalidArgument.for_field(GRAMMAR_FIELD, _reason(matcher.get_error()))
        return LarkConstraint(matcher, self.n_vocab)


class LarkConstraint:
    """llguidance's matcher: its token bitmask, unpacked over the candidates' logits."""

    def __init__(self, matcher: Any, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def mask(self, candidates: Any, logits: np.ndarray) -> None:
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        if self._matcher.is_error():
            raise GrammarDeadEnd
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little")
        logits[allowed[: self._n_vocab] == 0] = -np.inf

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise GrammarDeadEnd  # the mask allowed it: only a matcher fault lands here

    def close(self) -> None:
        self._matcher = None


class GrammarCompiler:
    """A loaded model's formats, compiled on a worker thread before queueing (the Lark
    tokenizer is built on the first Lark request: ~0.5 s, so loads do not pay for it)."""

    def __init__(self, vocab: Any, n_vocab: int) -> None:
        self._vocab = vocab
        self._n_vocab = n_vocab
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def compile(self, fmt: OutputFormat) -> GrammarPlan:
        if fmt.grammar is not None and fmt.grammar_syntax == "lark":
            return self._lark(fmt.grammar)
        plan = GbnfPlan(self._vocab, grammar_of(fmt), fmt.field)
        plan.open().close()  # compiles: then it will again, per sequence
        return plan

    def _lark(self, text: str) -> LarkPlan:
        import llguidance

        tokenizer = self._lark_tokenizer()
        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(text)
            error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        except (ValueError, RuntimeError, TypeError) as err:
            error = str(err) or type(err).__name__
        if error:
            log.info("Lark grammar not compiled: %s", error)
            raise InvalidArgument.for_field(GRAMMAR_FIELD, _reason(error))
        return LarkPlan(tokenizer, grammar, self._n_vocab)

    def _lark_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llama_cpp
                import llguidance.llamacpp

                # Every end-of-generation token ends a finished output (SmolLM2: <|im_end|>
                # as well as <|endoftext|>), as llama.cpp's grammar sampler allows them.
                n = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
                eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
                with warnings.catch_warnings():  # it reads each token's deprecated attr
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                        self._vocab, n_vocab=self._n_vocab, eos_token=eog or None
                    )
            return self._tokenizer


def _reason(error: str) -> str:
    """llguidance's message ("at 1(8): unknown name ...") without its source excerpt."""
    first = error.strip().splitlines()[0] if error.strip() else "invalid grammar"
    return f"llguidance cannot compile this Lark grammar: {first}"[:MAX_REASON_CHARS]
