"""`modelyard eval` through its CLI entry point against a real gRPC server on loopback
that plays a small fake RouterService (known answers, known Embed vectors, a route with
two arms) and a fake OutcomeService that keeps what RecordEvaluation receives.

Embed, RecordEvaluation and the judge's mesh are fakes here because their real
servicers are being built at the same time (issue 14); the real mesh's exact-match
figures are tests/integration/test_cli_eval.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    outcomes_pb2,
    outcomes_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)

# What each model answers to each prompt; "boom" fails the generation.
ANSWERS = {
    "m@1": {"q1": "ans-a", "q2": "ans-b", "q3": "ans-c"},
    "m@2": {"q1": "ans-a", "q2": "ans-x", "q3": "ans-c"},
}
VECTORS = {"ans-a": [1.0, 0.0], "ref-a": [1.0, 1.0], "ans-b": [0.0, 1.0], "ref-b": [0.0, 2.0]}
JUDGE = {"ans-a": "Score: 7", "ans-b": "I'd say 8/10.", "ans-c": "An excellent answer!"}
ROUTE = model_pb2.Route(
    name="r",
    arms=[
        model_pb2.RouteArm(name="control", model="m@1", weight=1),
        model_pb2.RouteArm(name="candidate", model="m@2", weight=1),
    ],
)
ROUTE_ARM = {"q1": "control", "q2": "candidate", "q3": "control"}  # the fake's "A/B draw"


@dataclass
class Seen:
    models: list[str] = field(default_factory=list)
    embeds: list[router_pb2.EmbedRequest] = field(default_factory=list)
    runs: list[outcomes_pb2.EvaluationRun] = field(default_factory=list)


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def Generate(self, request: Any, context: Any) -> Iterator[router_pb2.GenerateResponse]:
        self.seen.models.append(request.model)
        prompt = request.messages[-1].content if request.messages else request.prompt
        if prompt == "boom":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the fake refuses this prompt")
        model, arm = request.model, ""
        if model == "judge@1":
            text = next(reply for answer, reply in JUDGE.items() if answer in prompt)
        else:
            if model == "r":
                arm = ROUTE_ARM[prompt]
                model = next(a.model for a in ROUTE.arms if a.name == arm)
            text = ANSWERS[model][prompt]
        name, version = model.split("@")
        yield router_pb2.GenerateResponse(
            started=common_pb2.GenerationStarted(model=name, version=version, arm=arm)
        )
        yield router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text=text))
        yield router_pb2.GenerateResponse(
            finished=common_pb2.GenerationFinished(
                cost=common_pb2.Cost(total_usd=0.25), timings=common_pb2.Timings(total_ms=100)
            )
        )

    def Embed(self, request: Any, context: Any) -> router_pb2.EmbedResponse:
        self.seen.embeds.append(request)
        return router_pb2.EmbedResponse(
            embeddings=[
                common_pb2.Embedding(index=i, values=VECTORS[text])
                for i, text in enumerate(request.inputs)
            ]
        )

    def ListModels(self, request: Any, context: Any) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse(routes=[ROUTE])


class FakeOutcomes(outcomes_pb2_grpc.OutcomeServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def RecordEvaluation(self, request: Any, context: Any) -> outcomes_pb2.RecordEvaluationResponse:
        self.seen.runs.append(request.run)
        return outcomes_pb2.RecordEvaluationResponse()


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    router_pb2_grpc.add_RouterServiceServicer_to_server(FakeRouter(seen), server)  # type: ignore[abstract]
    outcomes_pb2_grpc.add_OutcomeServiceServicer_to_server(FakeOutcomes(seen), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(grace=None)


def _eval(
    address: str, tmp_path: Path, cases: list[dict[str, Any]], *args: str
) -> tuple[int, str, Path]:
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    env = {"MODELYARD_CONFIG": str(tmp_path / "no-config.yaml"), "COLUMNS": "200"}
    result = CliRunner().invoke(
        app, ["eval", str(path), "--router", address, *args], env=env, catch_exceptions=False
    )
    return result.exit_code, result.output, path


def test_embedding_similarity_is_the_cosine_of_the_embed_vectors(
    fake: tuple[str, Seen], tmp_path: Path
) -> None:
    address, seen = fake
    cases = [{"prompt": "q1", "reference": "ref-a"}, {"prompt": "q2", "reference": "ref-b"}]
    flags = ["-t", "m@1", "-m", "embedding_similarity", "--embedding-model", "emb", "--json"]
    before = len(seen.embeds)  # the module's fake: other tests' calls come first
    code, out, _ = _eval(address, tmp_path, cases, *flags)
    assert code == 0, out
    figures = json.loads(out)["targets"][0]["metrics"]["embedding_similarity"]
    # cos([1,0],[1,1]) = 1/sqrt(2); cos([0,1],[0,2]) = 1.
    assert figures["mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert (figures["count"], figures["errors"]) == (2, 0)
    assert {(e.model, tuple(e.inputs)) for e in seen.embeds[before:]} == {
        ("emb", ("ans-a", "ref-a")),
        ("emb", ("ans-b", "ref-b")),
    }


def test_the_judge_scores_on_one_to_ten_and_an_unparseable_reply_is_an_error(
    fake: tuple[str, Seen], tmp_path: Path
) -> None:
    address, _ = fake
    cases = [{"prompt": "q1"}, {"prompt": "q2"}, {"prompt": "q3"}]
    flags = ["-t", "m@1", "-m", "judge", "--judge-model", "judge@1", "--json"]
    code, out, _ = _eval(address, tmp_path, cases, *flags)
    assert code == 0, out
    figures = json.loads(out)["targets"][0]["metrics"]["judge"]
    assert (figures["count"], figures["errors"]) == (3, 1)
    assert figures["mean"] == pytest.approx((7 + 8 + 0) / 3)  # the error scores 0, counted


def test_a_pinned_arm_is_called_as_its_model_and_the_record_says_route_and_arm(
    fake: tuple[str, Seen], tmp_path: Path
) -> None:
    address, seen = fake
    cases = [
        {"prompt": "q1", "reference": "ans-a"},
        {"prompt": "q2", "reference": "ans-b"},
        {"prompt": "boom", "reference": "anything"},
    ]
    flags = ["-t", "m@1", "-t", "r:candidate", "--record", "--registry", address, "--run-id", "x1"]
    before = len(seen.models)  # the module's fake: other tests' calls come first
    code, out, path = _eval(address, tmp_path, cases, *flags)
    assert code == 0, out
    assert "exact_match" in out and "m@2 [candidate]" in out  # the table, rendered
    called = seen.models[before:]
    assert "m@2" in called and "r" not in called  # the arm's model, called directly
    run = seen.runs[-1]
    assert (run.id, run.dataset, run.prompts) == ("x1", "cases.jsonl", 3)
    assert run.dataset_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first, pinned = run.targets
    assert (first.target, first.model, first.version, first.arm) == ("m@1", "m", "1", "")
    assert (pinned.target, pinned.model, pinned.version, pinned.arm) == ("r", "m", "2", "candidate")
    # m@1: q1, q2 right, boom failed -> 2/3; the arm's m@2 gets q2 wrong -> 1/3.
    assert [(m.metric, m.count, m.mean) for m in first.metrics] == [("exact_match", 3, 2 / 3)]
    assert [(m.metric, m.count, m.mean) for m in pinned.metrics] == [("exact_match", 3, 1 / 3)]
    assert (first.errors, first.cost_usd, first.latency_p50_ms) == (1, 0.5, 100)


def test_a_route_target_is_grouped_by_the_arm_that_answered(
    fake: tuple[str, Seen], tmp_path: Path
) -> None:
    address, _ = fake
    cases = [{"prompt": q, "reference": "ans-a"} for q in ("q1", "q2", "q3")]
    code, out, _ = _eval(address, tmp_path, cases, "-t", "m@1", "-t", "r", "--json")
    assert code == 0, out
    rows = json.loads(out)["targets"]
    arms = {(r["target"], r["arm"], r["version"]): r["metrics"]["exact_match"] for r in rows}
    assert set(arms) == {("m@1", "", "1"), ("r", "control", "1"), ("r", "candidate", "2")}
    assert arms[("r", "control", "1")]["count"] == 2  # q1 and q3 went to control
    assert arms[("r", "candidate", "2")]["mean"] == 0.0
    assert arms[("r", "control", "1")]["mean"] == 0.5  # q1 right, q3 wrong


def test_mistakes_are_usage_errors_that_say_what_to_fix(
    fake: tuple[str, Seen], tmp_path: Path
) -> None:
    address, _ = fake
    code, out, _ = _eval(address, tmp_path, [{"prompt": "q1"}], "-t", "r:nope")
    assert code == 1 and "route 'r' has no arm 'nope' (its arms: control, candidate)" in out
    code, out, _ = _eval(address, tmp_path, [{"prompt": "q1"}], "-t", "m@1", "-m", "bleu")
    assert code == 1 and "unknown metric(s) bleu" in out
    code, out, _ = _eval(address, tmp_path, [{"prompt": "q1"}], "-t", "m@1", "-m", "judge")
    assert code == 1 and "--judge-model" in out
    # Nothing listens on port 1: one clear error, not a table of failures.
    code, out, _ = _eval("127.0.0.1:1", tmp_path, [{"prompt": "q1"}], "-t", "m@1")
    assert code == 1 and "nothing answers at 127.0.0.1:1" in out
