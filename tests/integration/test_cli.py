"""The CLI's `generate`, `chat`, `stats` and `workers` as a user runs them (a process
each), against the real mesh of tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

PROMPT = "The three primary colors are"


def modelyard(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
        check=False,
    )
    return done


def _greedy(mesh: LocalMesh, request: router_pb2.CompleteRequest) -> router_pb2.CompleteResponse:
    with grpc.insecure_channel(mesh.router_address) as channel:
        reply: router_pb2.CompleteResponse = router_pb2_grpc.RouterServiceStub(channel).Complete(
            request, timeout=120
        )
    return reply


def _stats(mesh: LocalMesh, model: model_pb2.Model) -> dict[str, Any]:
    done = modelyard("stats", "--router", mesh.router_address, "--json")
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return next(
        (m for m in reply.get("models", []) if m["model"] == model.name),
        {"traffic": {}},
    )


def test_generate_streams_the_greedy_text_and_a_summary(
    mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    expected = _greedy(
        mesh,
        router_pb2.CompleteRequest(
            model=smollm2.name,
            prompt=PROMPT,
            sampling=common_pb2.SamplingParams(max_tokens=12, temperature=0.0),
        ),
    )
    done = modelyard(
        "generate",
        PROMPT,
        "--completion",
        "--model",
        smollm2.name,
        "--router",
        mesh.router_address,
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.text + "\n"
    summary = done.stderr
    assert f"{smollm2.name}@{smollm2.version} on worker-0" in summary
    assert "12 out" in summary and "length" in summary


def test_generate_json_prints_every_protocol_event(
    mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    done = modelyard(
        "generate",
        "Say hello.",
        "--model",
        smollm2.name,
        "--router",
        mesh.router_address,
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert set(kinds[1:-1]) == {"delta"}
    assert events[0]["started"]["model"] == smollm2.name
    streamed = sum(len(e["delta"].get("token_ids", [])) for e in events[1:-1])
    assert int(events[-1]["finished"]["usage"]["output_tokens"]) == streamed == 6


def test_generate_reports_a_service_error_and_exits_1(mesh: LocalMesh) -> None:
    done = modelyard("generate", "hi", "--model", "no-such-model", "--router", mesh.router_address)
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr and "no-such-model" in done.stderr


def test_chat_keeps_the_history_until_reset(mesh: LocalMesh, smollm2: model_pb2.Model) -> None:
    before = int(_stats(mesh, smollm2)["traffic"].get("requests", 0))
    turns = (
        "What is the capital of France? Answer in one sentence.\nAnd of Italy?\n/reset\nHi\n/exit\n"
    )
    done = modelyard(
        "chat",
        "--system",
        "You are a helpful assistant.",
        "--model",
        smollm2.name,
        "--router",
        mesh.router_address,
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        stdin=turns,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("you>") == 5  # one prompt per line read, /exit included
    assert done.stdout.count("model>") == 3  # /reset and /exit are not sent
    assert "Paris" in done.stdout
    summaries = [line for line in done.stderr.splitlines() if "in /" in line]
    assert len(summaries) == 3
    tokens_in = [int(line.split(" in /")[0].rsplit("·", 1)[1]) for line in summaries]
    # The second turn sends the first question and answer again; after /reset only the
    # system message and the new one.
    assert tokens_in[1] > tokens_in[0] > tokens_in[2]
    after = int(_stats(mesh, smollm2)["traffic"].get("requests", 0))
    assert after - before == 3


def test_stats_and_workers_show_what_the_router_saw(
    mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    _greedy(
        mesh,
        router_pb2.CompleteRequest(
            model=smollm2.name,
            prompt="Hi",
            sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0),
        ),
    )
    traffic = _stats(mesh, smollm2)["traffic"]
    assert int(traffic["requests"]) >= 1 and int(traffic["output_tokens"]) >= 4

    table = modelyard("stats", "--router", mesh.router_address)
    assert table.returncode == 0, table.stderr
    assert f"{smollm2.name}@{smollm2.version}" in table.stdout

    listed = modelyard("workers", "--router", mesh.router_address, "--json")
    assert listed.returncode == 0, listed.stderr
    (worker,) = json.loads(listed.stdout)["workers"]
    assert worker["address"] == mesh.worker_addresses[0] and worker["healthy"] is True
    warm = [m for m in worker["status"]["models"] if m["name"] == smollm2.name]
    assert warm and warm[0]["state"] == "RESIDENCY_STATE_WARM"

    table = modelyard("workers", "--router", mesh.router_address)
    assert table.returncode == 0, table.stderr
    assert mesh.worker_addresses[0] in table.stdout
    assert f"{smollm2.name}@{smollm2.version}:warm" in table.stdout
