"""Score the answers with the chosen metrics and group them by who answered.

A failed generation scores 0 on every metric that applies to its case and counts as an
error; so does an answer a metric could not score (MetricError: an unparseable judge
reply, a failed Embed). A target's answers are grouped by the model version and arm that
answered; failures with no answerer join the target's one group, or a group of their
own when the target was answered by several.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.errors import ModelyardError
from modelyard.evaluation import mesh_metrics as _mesh_metrics  # registers its metrics
from modelyard.evaluation.dataset import Case
from modelyard.evaluation.metrics import METRICS, Metric, MetricContext, MetricError
from modelyard.evaluation.runner import Answer, Target

log = logging.getLogger(__name__)
_ = _mesh_metrics


@dataclass(frozen=True)
class Score:
    value: float
    error: bool = False


@dataclass
class Group:
    """One target's answers from one model version (and arm)."""

    target: Target
    model: str
    version: str
    arm: str
    answers: list[Answer] = field(default_factory=list)
    # metric -> (case index, score) for every case the metric applies to, in case order
    scores: dict[str, list[tuple[int, Score]]] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(1 for a in self.answers if a.error)

    def metric_errors(self, metric: str) -> int:
        return sum(1 for _, s in self.scores.get(metric, []) if s.error)


def select_metrics(names: Sequence[str], cases: Sequence[Case]) -> list[Metric]:
    """The named metrics, or by default each text-only metric some case can be scored by."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        known = ", ".join(sorted(METRICS))
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {known}")
    if names:
        return [METRICS[n] for n in dict.fromkeys(names)]
    default = ("exact_match", "regex", "json_schema")
    return [METRICS[n] for n in default if any(METRICS[n].applies(c) for c in cases)]


async def score_one(metric: Metric, answer: Answer, case: Case, ctx: MetricContext) -> Score:
    if answer.error:
        return Score(0.0, error=True)
    try:
        result = metric.score(answer.text, case, ctx)
        value = await result if inspect.isawaitable(result) else result
    except MetricError as err:
        log.info("%s could not score case %s: %s", metric.name, case.id, err)
        return Score(0.0, error=True)
    except ModelyardError as err:
        log.info("%s failed on case %s: %s %s", metric.name, case.id, err.code.name, err.message)
        return Score(0.0, error=True)
    return Score(float(value))


async def score_all(
    answers: Sequence[Answer],
    cases: Sequence[Case],
    metrics: Sequence[Metric],
    ctx: MetricContext,
    *,
    concurrency: int = 4,
) -> dict[tuple[int, int, str], Score]:
    """(target, case, metric) -> score for every metric that applies to the case."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(answer: Answer, metric: Metric) -> tuple[tuple[int, int, str], Score]:
        async with gate:
            score = await score_one(metric, answer, cases[answer.case], ctx)
        return (answer.target, answer.case, metric.name), score

    jobs = [one(a, m) for a in answers for m in metrics if m.applies(cases[a.case])]
    return dict(await asyncio.gather(*jobs))


def group_answers(
    answers: Sequence[Answer],
    targets: Sequence[Target],
    scores: dict[tuple[int, int, str], Score],
    metrics: Sequence[Metric],
) -> list[Group]:
    """Groups in target order, then by first appearance of each answerer."""
    groups: list[Group] = []
    for t, target in enumerate(targets):
        own = sorted((a for a in answers if a.target == t), key=lambda a: a.case)
        by_key: dict[tuple[str, str, str], Group] = {}
        for a in own:
            if a.model:
                key = (a.model, a.version, a.arm)
                by_key.setdefault(key, Group(target, *key)).answers.append(a)
        failed = [a for a in own if not a.model]
        if failed and len(by_key) == 1:
            only = next(iter(by_key.values()))
            only.answers = sorted([*only.answers, *failed], key=lambda a: a.case)
        elif failed:
            by_key[("", "", "")] = Group(target, "", "", "", failed)
        groups.extend(by_key.values())
    for group in groups:
        for m in metrics:
            group.scores[m.name] = [
                (a.case, scores[(a.target, a.case, m.name)])
                for a in group.answers
                if (a.target, a.case, m.name) in scores
            ]
    return groups
