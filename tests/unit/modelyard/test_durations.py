"""Durations typed on the command line (`modelyard stats --since`, GET /v1/stats?since=)."""

from __future__ import annotations

import pytest

from modelyard.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604_800), (" 2H ", 7200)]
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "-1h", "0s", "1w", "99999999999d"])
def test_other_text_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
