"""Each metric on inputs whose score is known, and the intervals on known figures."""

from __future__ import annotations

import math
import re

import pytest

from modelyard.evaluation.dataset import Case
from modelyard.evaluation.mesh_metrics import cosine, judge_prompt, parse_judge_score
from modelyard.evaluation.metrics import (
    METRICS,
    MetricContext,
    MetricError,
    exact_match,
    json_schema,
    regex,
    rouge_l,
    rouge_l_f1,
)
from modelyard.evaluation.statistics import bootstrap, difference, mean_interval, wilson

CTX = MetricContext()


def test_exact_match_normalizes_case_and_whitespace_unless_told_not_to() -> None:
    case = Case(id="1", prompt="p", references=("Paris", "City of Light"))
    assert exact_match("  paris\n", case, CTX) == 1.0
    assert exact_match("city   of\tlight", case, CTX) == 1.0
    assert exact_match("Paris, France", case, CTX) == 0.0
    raw = MetricContext(normalize=False)
    assert exact_match("Paris", case, raw) == 1.0
    assert exact_match("paris", case, raw) == 0.0


def test_regex_searches_or_matches_the_whole_answer() -> None:
    case = Case(id="1", prompt="p", regex=re.compile(r"\d{4}"))
    assert regex("It was 1969.", case, CTX) == 1.0
    assert regex("It was 1969.", case, MetricContext(regex_mode="fullmatch")) == 0.0
    assert regex(" 1969\n", case, MetricContext(regex_mode="fullmatch")) == 1.0
    assert regex("no year", case, CTX) == 0.0


def test_json_schema_parses_and_validates() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    case = Case(id="1", prompt="p", json_schema=schema)
    assert json_schema('{"n": 3}', case, CTX) == 1.0
    assert json_schema('```json\n{"n": 3}\n```', case, CTX) == 1.0  # one fence allowed
    assert json_schema('{"n": "three"}', case, CTX) == 0.0  # parses, fails the schema
    assert json_schema('{"n": 3', case, CTX) == 0.0  # does not parse


def test_rouge_l_matches_rouge_scores_published_example() -> None:
    # rouge-score's README: target "The quick brown fox jumps over the lazy dog",
    # prediction "The quick brown dog jumps on the log." -> rougeL F 0.5882352941176471.
    target = "The quick brown fox jumps over the lazy dog"
    prediction = "The quick brown dog jumps on the log."
    assert rouge_l_f1(prediction, target) == pytest.approx(0.5882352941176471)
    case = Case(id="1", prompt="p", references=("unrelated words", target))
    assert rouge_l(prediction, case, CTX) == pytest.approx(0.5882352941176471)  # best ref
    assert rouge_l_f1("", target) == 0.0


def test_cosine_and_the_judges_score_parsing() -> None:
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(MetricError):
        cosine([1.0], [1.0, 0.0])
    for reply, score in [
        ("Score: 7", 7.0),
        ("score = 10/10", 10.0),
        ("**8**", 8.0),
        ("I would give it 6 out of 10.", 6.0),
        ("9", 9.0),
        ("Scores vary: 3, but Score: 5", 5.0),
    ]:
        assert parse_judge_score(reply) == score, reply
    for reply in ("great answer", "Score: 75", "between 3 and 4", "0.5"):
        with pytest.raises(MetricError):
            parse_judge_score(reply)
    prompt = judge_prompt("Paris", Case(id="1", prompt="Capital?", references=("Paris",)))
    assert "Capital?" in prompt and "Reference:\nParis" in prompt and "Score: N" in prompt


def test_every_registered_metric_is_reachable_by_name() -> None:
    expected = {"exact_match", "regex", "json_schema", "rouge_l"}
    assert expected <= set(METRICS)
    assert METRICS["exact_match"].binary and not METRICS["rouge_l"].binary


def test_wilson_gives_the_textbook_intervals() -> None:
    eight = wilson(8, 10)
    assert (eight.mean, round(eight.low, 4), round(eight.high, 4)) == (0.8, 0.4902, 0.9433)
    none = wilson(0, 10)
    assert (none.low, round(none.high, 4)) == (0.0, 0.2775)
    every = wilson(10, 10)
    assert (round(every.low, 4), every.high) == (0.7225, 1.0)
    assert mean_interval([1.0] * 8 + [0.0] * 2, binary=True) == eight
    with pytest.raises(ValueError):
        wilson(3, 0)


def test_the_bootstrap_on_known_figures() -> None:
    # Resampled means of [1, 2] are 1, 1.5 or 2 (1/4, 1/2, 1/4): the 2.5% and 97.5%
    # percentiles are exactly 1 and 2.
    two = bootstrap([1.0, 2.0], seed=3)
    assert (two.mean, two.low, two.high) == (1.5, 1.0, 2.0)
    flat = bootstrap([0.7] * 20)
    assert flat.low == pytest.approx(0.7) and flat.high == pytest.approx(0.7)
    # 100 values of 0 and 1: the normal approximation is 0.5 +- 1.96 x 0.05.
    coin = bootstrap([0.0, 1.0] * 50, seed=1)
    assert coin.mean == 0.5
    assert 0.38 < coin.low < 0.42 and 0.58 < coin.high < 0.62
    assert bootstrap([0.0, 1.0] * 50, seed=1) == coin  # seeded: reproducible


def test_a_paired_difference_removes_the_cases_own_spread() -> None:
    base = [0.0, 1.0, 0.2, 0.9, 0.4, 0.6] * 5
    other = [b + 0.1 for b in base]
    paired = difference(base, other, paired=True)
    assert paired.mean == pytest.approx(0.1)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    unpaired = difference(base, other, paired=False)
    assert unpaired.mean == pytest.approx(0.1)
    assert unpaired.low < 0 < unpaired.high  # the spread of the cases swamps 0.1
