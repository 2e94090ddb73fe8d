"""Structured output for the transformers engine: xgrammar over the model's tokenizer.

One `FormatCompiler` per loaded model holds xgrammar's tokenizer info and compiler (with
its cache); a request's format compiles once, off the event loop, before the request is
queued, so a format xgrammar cannot enforce is INVALID_ARGUMENT naming its field rather
than a failed decode. Each sequence then has a `SequenceGrammar`: before every draw a
token bitmask leaves only the tokens the format allows, and the chosen token advances the
matcher. JSON object mode is the schema {"type": "object"}; a JSON Schema, a regex, a
GBNF grammar (xgrammar's EBNF) and a Lark grammar each have their compiler. Whitespace
between JSON tokens is bounded, as llama.cpp's grammars bound it: a sampled model could
otherwise spend its whole budget on blanks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from modelyard.errors import InvalidArgument
from worker.engines.base import OutputFormat

log = logging.getLogger(__name__)

MAX_JSON_WHITESPACE = 20  # blanks in a row between JSON tokens (llama.cpp's GBNF: 20)
_OBJECT_SCHEMA = json.dumps({"type": "object"})
# xgrammar's C++ errors start "[hh:mm:ss] /path/to/file.cc:123: "; the client sees the rest.
_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")
_WHAT = {
    "sampling.response_format.json_schema": "JSON Schema",
    "sampling.response_format.regex": "pattern",
    "sampling.response_format.grammar": "grammar",
    "sampling.response_format": "format",
}


class FormatCompiler:
    """The loaded model's xgrammar compiler; built on first use (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size  # the logits' width, at least the tokenizer's
        self.stop_ids = tuple(sorted(stop_ids))
        self._lock = threading.Lock()
        self._compiler: Any = None

    def _get(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(self.stop_ids)
                )
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, fmt: OutputFormat) -> Any:
        """xgrammar's CompiledGrammar for the format; INVALID_ARGUMENT naming its field."""
        compiler = self._get()
        try:
            if fmt.regex is not None:
                return compiler.compile_regex(fmt.regex)
            if fmt.grammar is not None:
                if fmt.grammar_syntax == "lark":
                    return compiler.compile_lark(fmt.grammar)
                return compiler.compile_grammar(fmt.grammar)
            return compiler.compile_json_schema(
                fmt.json_schema if fmt.json_schema is not None else _OBJECT_SCHEMA,
                max_whitespace_cnt=MAX_JSON_WHITESPACE,
            )
        except (RuntimeError, ValueError, TypeError, RecursionError) as err:
            log.info("format not compiled for %s: %s", fmt.field, err)
            raise InvalidArgument.for_field(
                fmt.field, f"xgrammar cannot enforce this {_WHAT[fmt.field]}: {_reason(err)}"
            ) from None


def _reason(err: BaseException) -> str:
    """The error's first line without xgrammar's source location, at most 200 chars."""
    lines = str(err).strip().splitlines()
    first = _LOCATION.sub("", lines[0]).strip() if lines else ""
    return (first or type(err).__name__)[:200]


class SequenceGrammar:
    """One sequence's matcher and bitmask (used on the engine's owner thread only)."""

    def __init__(self, compiled: Any, vocab_size: int, stop_ids: Iterable[int], field: str) -> None:
        import numpy as np
        import torch
        import xgrammar

        self._xgrammar = xgrammar
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._vocab_size = vocab_size
        self._field = field
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._filled = False  # the bitmask is for the next token already
        # Every bit set but the stop tokens': ANDed with the bitmask, what else may follow.
        words = np.full(self._bitmask.shape[1], 0xFFFFFFFF, dtype=np.uint32)
        for t in stop_ids:
            words[t // 32] &= ~np.uint32(1 << (t % 32))
        self._not_stop = torch.from_numpy(words.view(np.int32)).unsqueeze(0)

    def _fill(self) -> None:
        if not self._filled:
            self._matcher.fill_next_token_bitmask(self._bitmask)
            self._filled = True

    def mask(self, logits: Any) -> None:
        """Disallowed tokens' logits to -inf, in place (logits: the one row, float)."""
        self._fill()
        if not bool(self._bitmask.any()):
            raise _dead_end(self._field)
        bitmask = self._bitmask.to(logits.device, non_blocking=True)
        self._xgrammar.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self._vocab_size)

    def accept(self, token: int) -> bool:
        """Advance past the chosen token; True when only a stop token may follow it, so the
        output is complete and decoding can end without another forward pass."""
        if not self._matcher.accept_token(token):
            raise _dead_end(self._field)  # the mask allowed it: only a matcher fault lands here
        self._filled = False
        if not self._matcher.is_completed():
            return False
        self._fill()
        return not bool((self._bitmask & self._not_stop).any())


def _dead_end(field: str) -> InvalidArgument:
    return InvalidArgument.for_field(
        field,
        "no token can continue the output here: the format admits no next character",
    )
