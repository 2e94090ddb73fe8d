"""docs/configuration.md is generated from the services' settings and must match them."""

from __future__ import annotations

from modelyard.cli.envdoc import DOC, render


def test_configuration_reference_matches_the_settings() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m modelyard.cli.envdoc` and commit"
    )


def test_every_service_documents_its_tls_variables() -> None:
    text = render()
    for service in ("REGISTRY", "ROUTER", "WORKER"):
        assert f"`MODELYARD_{service}_TLS_CERT_FILE`" in text
        assert f"`MODELYARD_{service}_ADDRESS`" in text
