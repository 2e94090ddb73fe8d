"""The chart's alerts on a real Prometheus rule engine: `promtool check rules` on the rendered
PrometheusRule, then `promtool test rules` with synthetic series (tests/ops/alert_cases.py)
that make each alert fire and others beside them that must stay silent."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.v1 import router_pb2
from tests.ops.alert_cases import CASES, promtool_tests
from tests.ops.prom import alerts, binary, render_rules, target_labels

_LABEL = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_]+)\s*\}\}")


@pytest.fixture(scope="module")
def rules(helm: Path) -> dict[str, Any]:
    return render_rules(helm)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def _fill(template: str, labels: dict[str, str]) -> str:
    return _LABEL.sub(lambda m: labels.get(m[1], ""), template)


def _with_summaries(tests: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    """Expect each firing alert's summary with its labels filled in: an annotation that
    names a label the expression drops renders empty and fails the comparison."""
    by_name = alerts(rules)
    for group in tests["tests"]:
        for check in group["alert_rule_test"]:
            summary = by_name[check["alertname"]]["annotations"]["summary"]
            for alert in check["exp_alerts"]:
                labels = alert["exp_labels"]
                alert["exp_annotations"]["summary"] = _fill(summary, labels)
    return tests


def test_every_alert_has_a_case(rules: dict[str, Any]) -> None:
    names = set(alerts(rules))
    assert len(names) >= 5, names
    assert {c.alert for c in CASES} == names
    for case in CASES:
        # Beside what fires, each case holds series that must not.
        assert case.firing and len(case.input) > len(case.firing), case.alert


def test_promtool_checks_the_rendered_rules(rules: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(rules))} rules found" in result.stdout + result.stderr


def test_alerts_fire_when_they_should_and_only_then(rules: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = _with_summaries(promtool_tests("rules.yaml"), rules)
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_wrong_expectation(rules: dict[str, Any], tmp_path: Path) -> None:
    """The harness itself: an alert expected for a series that must stay silent fails."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = promtool_tests("rules.yaml")
    first = tests["tests"][0]["alert_rule_test"][0]
    first["exp_alerts"].append({"exp_labels": {"namespace": "modelyard", "model": "slow@1"}})
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def _exported_router_labels() -> dict[str, set[str]]:
    """Sample name -> label names, as the router's own registry exports them."""
    from router.metrics import RouterMetrics

    metrics = RouterMetrics()
    metrics.requests.labels(model="m@1", arm="", code="OK").inc()
    metrics.ttft.labels(model="m@1", arm="").observe(0.1)
    metrics.watch_breakers(lambda: {"10.0.0.5:50051": router_pb2.BREAKER_STATE_OPEN})
    metrics.watch_healthy_workers(lambda: {"m@1": 1})
    return {
        sample.name: set(sample.labels)
        for family in metrics.registry.collect()
        for sample in family.samples
    }


def test_cases_use_the_label_shapes_the_router_exports() -> None:
    exported = _exported_router_labels()
    scrape_labels = set(target_labels("router"))
    seen = set()
    for case in CASES:
        for text in case.input:
            name, _, inner = text.partition("{")
            labels = {pair.split("=", 1)[0] for pair in inner.rstrip("}").split(",")}
            if name.startswith("modelyard_router_"):
                assert labels - scrape_labels == exported[name], (case.alert, name)
                seen.add(name)
    assert len(seen) == 4, seen
