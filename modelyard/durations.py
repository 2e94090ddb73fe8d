"""Durations as a user types them on the command line: 30s, 15m, 1h, 7d."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
MAX_SECONDS = 2**32 - 1  # GetRoutingStatsRequest.window_seconds is a uint32


def parse_duration(text: str) -> int:
    """Seconds in "30s", "15m", "1h" or "7d"; ValueError with the accepted forms otherwise."""
    match = _PATTERN.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use a number and s, m, h or d (e.g. 1h)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"{text!r}: a duration must be above 0 and at most {MAX_SECONDS} s")
    return seconds
