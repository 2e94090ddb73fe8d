"""Metrics: a registry of name -> scorer, and the ones that need nothing but the text.

A metric is one function `(answer, case, context) -> float` (or an awaitable of one),
registered with `@metric(name, binary=..., applies=...)`: `applies` says which cases it
scores (a case without a reference is not scored by exact_match), `binary` that its
scores are 0/1 (Wilson intervals instead of the bootstrap). A scorer that cannot score
raises MetricError: the case counts as an error of that metric and scores 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator
from rapidfuzz.distance import LCSseq

from modelyard.evaluation.dataset import Case

ScoreResult = float | Awaitable[float]
EmbedFn = Callable[[Sequence[str]], Awaitable[list[list[float]]]]
AskFn = Callable[[str], Awaitable[str]]


class MetricError(Exception):
    """The metric could not score this answer (the message says why)."""


@dataclass(frozen=True)
class MetricContext:
    """What scorers may use besides the answer and its case: options, and the mesh
    calls (set only when the run has an embedding or judge model)."""

    normalize: bool = True
    regex_mode: Literal["search", "fullmatch"] = "search"
    embed: EmbedFn | None = None
    judge: AskFn | None = None


ScoreFn = Callable[[str, Case, MetricContext], ScoreResult]


@dataclass(frozen=True)
class Metric:
    name: str
    binary: bool
    applies: Callable[[Case], bool]
    score: ScoreFn


METRICS: dict[str, Metric] = {}


def metric(
    name: str, *, binary: bool, applies: Callable[[Case], bool]
) -> Callable[[ScoreFn], ScoreFn]:
    """Register a scorer under `name`."""

    def register(score: ScoreFn) -> ScoreFn:
        METRICS[name] = Metric(name=name, binary=binary, applies=applies, score=score)
        return score

    return register


def has_reference(case: Case) -> bool:
    return bool(case.references)


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Whitespace runs to one space, ends trimmed, case folded."""
    return _SPACE.sub(" ", text).strip().casefold()


@metric("exact_match", binary=True, applies=has_reference)
def exact_match(answer: str, case: Case, ctx: MetricContext) -> float:
    """1 when the answer equals one of the references (normalized unless asked not to)."""
    if ctx.normalize:
        answer = normalize_text(answer)
        return float(any(answer == normalize_text(r) for r in case.references))
    return float(answer in case.references)


@metric("regex", binary=True, applies=lambda case: case.regex is not None)
def regex(answer: str, case: Case, ctx: MetricContext) -> float:
    """1 when the case's pattern matches: anywhere (search) or the whole answer with its
    ends trimmed (fullmatch)."""
    assert case.regex is not None
    if ctx.regex_mode == "fullmatch":
        return float(case.regex.fullmatch(answer.strip()) is not None)
    return float(case.regex.search(answer) is not None)


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\n(.*)\n```$", re.DOTALL)


@metric("json_schema", binary=True, applies=lambda case: case.json_schema is not None)
def json_schema(answer: str, case: Case, ctx: MetricContext) -> float:
    """1 when the answer (one markdown code fence around it allowed) parses as JSON and
    validates against the case's schema."""
    assert case.json_schema is not None
    text = answer.strip()
    fenced = _FENCE.match(text)
    try:
        value: Any = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return 0.0
    return float(Draft202012Validator(case.json_schema).is_valid(value))


_WORD = re.compile(r"\w+")


def rouge_tokens(text: str) -> list[str]:
    """Case-folded word runs: rouge-score's default tokenizer (lowercase, alphanumerics)
    without its ASCII-only cut and without stemming."""
    return _WORD.findall(text.casefold())


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1: longest common token subsequence over both lengths."""
    cand, ref = rouge_tokens(candidate), rouge_tokens(reference)
    if not cand or not ref:
        return 0.0
    lcs = LCSseq.similarity(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@metric("rouge_l", binary=False, applies=has_reference)
def rouge_l(answer: str, case: Case, ctx: MetricContext) -> float:
    """The best ROUGE-L F1 over the case's references."""
    return max(rouge_l_f1(answer, r) for r in case.references)
