"""docs/configuration.md is generated from the services' settings and must match them."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from modelyard.cli.envdoc import DOC, render
from modelyard.cli.main import app


def test_configuration_reference_matches_the_settings() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m modelyard.cli.envdoc` and commit"
    )


def test_every_service_documents_its_tls_variables() -> None:
    text = render()
    for service in ("REGISTRY", "ROUTER", "WORKER"):
        assert f"`MODELYARD_{service}_TLS_CERT_FILE`" in text
        assert f"`MODELYARD_{service}_ADDRESS`" in text


@pytest.mark.parametrize("service", ["registry", "worker", "router"])
def test_serve_help_names_only_variables_that_exist(service: str) -> None:
    result = CliRunner().invoke(app, [service, "serve", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    named = set(re.findall(r"MODELYARD_[A-Z0-9_<>]+", result.output))
    documented = set(re.findall(r"`(MODELYARD_[A-Z0-9_]+)`", render()))
    assert named, result.output
    assert named <= documented, named - documented
