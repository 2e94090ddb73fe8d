"""Metrics that ask the mesh: embedding similarity (RouterService.Embed) and an LLM judge
(a generation on --judge-model). Their calls come in through MetricContext, so this
module knows no gRPC."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from modelyard.evaluation.dataset import Case
from modelyard.evaluation.metrics import MetricContext, MetricError, has_reference, metric


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; MetricError for vectors of different lengths or no length."""
    if len(a) != len(b) or not a:
        raise MetricError(f"embeddings of lengths {len(a)} and {len(b)} cannot be compared")
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if norm == 0:
        raise MetricError("an embedding is the zero vector")
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm


@metric("embedding_similarity", binary=False, applies=has_reference)
async def embedding_similarity(answer: str, case: Case, ctx: MetricContext) -> float:
    """The best cosine between the answer's embedding and a reference's. An empty answer
    is like nothing: 0 (the Embed RPC refuses empty texts)."""
    if ctx.embed is None:
        raise MetricError("embedding_similarity needs --embedding-model")
    if not answer.strip():
        return 0.0
    vectors = await ctx.embed([answer, *case.references])
    if len(vectors) != 1 + len(case.references):
        raise MetricError(f"Embed returned {len(vectors)} vectors for {1 + len(case.references)}")
    return max(cosine(vectors[0], ref) for ref in vectors[1:])


JUDGE_RUBRIC = """You are grading an answer to a task. Score it from 1 (useless or wrong) \
to 10 (fully correct, complete and clear).{reference_part}

Task:
{task}

Answer:
{answer}

Reply with the score only, as "Score: N"."""

_REFERENCE_PART = "\nA reference answer is given; judge agreement with it.\n\nReference:\n{ref}"


def judge_prompt(answer: str, case: Case) -> str:
    """The fixed rubric, filled in for one case."""
    task = case.prompt or "\n".join(f"{role}: {content}" for role, content in case.messages)
    reference_part = _REFERENCE_PART.format(ref=case.references[0]) if case.references else ""
    return JUDGE_RUBRIC.format(reference_part=reference_part, task=task, answer=answer)


# "Score: 7", "score = 7/10", "**8**", "7 out of 10", "9": the labelled form wins, then a
# lone number from 1 to 10 (optionally "/10" or "out of 10").
_LABELLED = re.compile(r"score\W{0,4}(10|[1-9])(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])(10|[1-9])(?:\.0+)?(?:\s*(?:/|out of)\s*10)?(?!\d|\.\d)")


def parse_judge_score(reply: str) -> float:
    """The 1-10 score in a judge's reply; MetricError when there is none or it is
    ambiguous (several different numbers and no "Score:" label)."""
    labelled = _LABELLED.findall(reply)
    if labelled:
        return float(labelled[-1])
    numbers = set(_NUMBER.findall(reply))
    if len(numbers) == 1:
        return float(numbers.pop())
    shown = reply.strip()[:80]
    why = "no score from 1 to 10" if not numbers else "several scores"
    raise MetricError(f"judge reply has {why}: {shown!r}")


@metric("judge", binary=False, applies=lambda case: True)
async def judge(answer: str, case: Case, ctx: MetricContext) -> float:
    """A 1-10 score from an LLM judge on the fixed rubric."""
    if ctx.judge is None:
        raise MetricError("judge needs --judge-model")
    return parse_judge_score(await ctx.judge(judge_prompt(answer, case)))
