"""pytest plugin: `-p tests.mutations.plugin --mutation NAME` applies one breaker to the
whole run (see tests/mutations/breakers.py)."""

from __future__ import annotations

import pytest

from tests.mutations.breakers import by_name


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--mutation",
        default="",
        help="apply this breaker of tests/mutations/breakers.py for the whole run",
    )


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--mutation")
    if not name:
        return
    breaker = by_name(name)
    patch = pytest.MonkeyPatch()
    breaker.apply(patch)
    config.add_cleanup(patch.undo)


def pytest_report_header(config: pytest.Config) -> str | None:
    name = config.getoption("--mutation")
    return f"mutation: {name} ({by_name(name).breaks})" if name else None
