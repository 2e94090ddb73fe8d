"""pytest plugin for CI (`pytest -p tests.ci_gate`, as scripts/test.sh runs it).

At the end of the run it prints how many tests were skipped, xfailed and xpassed, and
turns a green run with any of them into a failed one: in CI every collected test must
run and pass. Tests that cannot run without a GPU carry the `gpu` marker and are
deselected (`-m "not gpu"`) instead of skipping; deselected tests are counted apart.
"""

from __future__ import annotations

import pytest

_OUTCOMES = ("skipped", "xfailed", "xpassed")
_COUNTS = pytest.StashKey[dict[str, int]]()


def _counts(config: pytest.Config) -> dict[str, int]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    stats: dict[str, list[object]] = getattr(reporter, "stats", {})
    counts = {outcome: len(stats.get(outcome, [])) for outcome in _OUTCOMES}
    counts["deselected"] = len(stats.get("deselected", []))
    return counts


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    counts = _counts(session.config)
    session.config.stash[_COUNTS] = counts
    if exitstatus == pytest.ExitCode.OK and any(counts[o] for o in _OUTCOMES):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    counts = config.stash.get(_COUNTS, None) or _counts(config)
    line = ", ".join(f"{outcome}: {counts[outcome]}" for outcome in (*_OUTCOMES, "deselected"))
    bad = any(counts[o] for o in _OUTCOMES)
    terminalreporter.section("ci gate", sep="=", red=bad, green=not bad, bold=True)
    terminalreporter.line(f"skip count: {line}")
    if bad:
        terminalreporter.line(
            "CI runs every collected test: a skip, xfail or xpass fails the run "
            "(mark tests that need a GPU with `gpu`; CI deselects them)",
            red=True,
        )
