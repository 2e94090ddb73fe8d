"""Results of `bench.gpu_check`: one line per check (PASS / FAIL / SKIPPED) and the report."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Status = Literal["PASS", "FAIL", "SKIPPED"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:<7} {self.name}: {self.detail}"


def passed(name: str, detail: str) -> Check:
    return Check(name, "PASS", detail)


def failed(name: str, detail: str) -> Check:
    return Check(name, "FAIL", detail)


def skipped(name: str, reason: str) -> Check:
    return Check(name, "SKIPPED", reason)


async def guarded(name: str, check: Awaitable[Check]) -> Check:
    """The check's result, or FAIL with the exception when it raised."""
    try:
        return await check
    except Exception as err:
        log.exception("check %s raised", name)
        return failed(name, f"{type(err).__name__}: {err}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(title: str, environment: Sequence[str], checks: Sequence[Check]) -> str:
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("PASS", "FAIL", "SKIPPED")}
    lines = [
        f"# {title}",
        "",
        f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped.",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {_cell(c.name)} | {c.status} | {_cell(c.detail)} |" for c in checks),
        "",
        "## Environment",
        "",
        "```text",
        *environment,
        "```",
        "",
    ]
    return "\n".join(lines)
