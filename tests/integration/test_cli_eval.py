"""`modelyard eval` as a user runs it (a process) against the real mesh of
tests/integration/conftest.py: SmolLM2 on llama.cpp, greedy. The references of two
cases are the model's own greedy answers and that of a third is deliberately wrong, so
exact match must come out at exactly 2/3 for the model however it is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from modelyard.evaluation.statistics import wilson
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

KNOWN = ("Name a primary colour.", "Say hello.")
WRONG = ("Name a planet.",)
MAX_TOKENS = 4


def _greedy(mesh: LocalMesh, model: str, prompt: str) -> str:
    """The answer the eval will get: the same chat request, greedy."""
    request = router_pb2.CompleteRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role="user", content=prompt)],
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )
    with grpc.insecure_channel(mesh.router_address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Complete(request, timeout=120)
    return str(reply.text)


def test_exact_match_is_the_known_fraction_for_each_name_of_the_model(
    mesh: LocalMesh, smollm2: model_pb2.Model, tmp_path: Path
) -> None:
    cases = [{"id": p, "prompt": p, "reference": _greedy(mesh, smollm2.name, p)} for p in KNOWN]
    cases += [{"id": p, "prompt": p, "reference": "certainly not the answer"} for p in WRONG]
    path = tmp_path / "known.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    pinned = f"{smollm2.name}@{smollm2.version}"
    args = ["eval", str(path), "--router", mesh.router_address, "-t", smollm2.name, "-t", pinned]
    # One at a time: batched greedy decoding may differ from solo on near-tie logits.
    args += ["--max-tokens", str(MAX_TOKENS), "--concurrency", "1", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "MODELYARD_CONFIG": str(tmp_path / "none.yaml")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["dataset"], report["prompts"]) == ("known.jsonl", 3)
    by_name, by_version = report["targets"]
    expected = wilson(2, 3)
    for row, target in ((by_name, smollm2.name), (by_version, pinned)):
        assert (row["target"], row["model"], row["version"]) == (
            target,
            smollm2.name,
            smollm2.version,
        )
        figures = row["metrics"]["exact_match"]
        assert (figures["count"], figures["errors"]) == (3, 0), row
        assert figures["mean"] == pytest.approx(2 / 3), row
        assert (figures["ci_low"], figures["ci_high"]) == pytest.approx(
            (expected.low, expected.high)
        )
        assert row["latency_p50_ms"] > 0
    # The same answers case by case: the paired difference is exactly 0.
    assert by_version["metrics"]["exact_match"]["diff_to_first"] == pytest.approx(
        {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    )
