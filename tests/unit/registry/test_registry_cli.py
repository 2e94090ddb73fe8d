"""`modelyard models|routes|registry migrate` against a real registry process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli.main import app
from modelyard.local_mesh import free_port, spawn_service

TOKEN = "cli-s3cret"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cli")
    address = f"127.0.0.1:{free_port()}"
    service = spawn_service(
        "registry",
        [
            "registry",
            "serve",
            "--address",
            address,
            "--database-url",
            f"sqlite+aiosqlite:///{data / 'registry.db'}",
        ],
        address,
        data / "registry.log",
        env={"MODELYARD_REGISTRY_ADMIN_TOKEN": TOKEN},
    )
    try:
        service.wait_healthy(60)
        yield address
    finally:
        service.stop()


def run(address: str, *args: str, token: str = TOKEN) -> tuple[int, str]:
    env = {"MODELYARD_REGISTRY": address, "MODELYARD_ADMIN_TOKEN": token, "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_models_and_routes_from_flags_and_files(registry: str, tmp_path: Path) -> None:
    spec = tmp_path / "model.yaml"
    spec.write_text(
        "name: smol\nversion: '1'\n"
        f"artifact: {{uri: 'file:///m.gguf', sha256: '{'ab' * 32}',"
        " format: ARTIFACT_FORMAT_GGUF}\n"
        "capabilities: {chat: true, contextLength: 2048, tags: [small]}\nlabels: {team: search}\n"
    )
    code, out = run(registry, "models", "register", "-f", str(spec))
    assert code == 0, out
    assert "registered smol@1" in out
    code, out = run(
        registry, "models", "register", "--name", "smol", "--version", "2",
        "--uri", "file:///m2.gguf", "--sha256", "cd" * 32, "--format", "gguf",
        "--chat", "--tag", "small",
        "--label", "team=search", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["version"] == "2"

    code, out = run(registry, "models", "stage", "smol@1", "production")
    assert code == 0 and "production" in out
    code, out = run(registry, "models", "show", "smol", "--json")
    assert json.loads(out)["stage"] == "STAGE_PRODUCTION"
    code, out = run(registry, "models", "list", "--stage", "production", "-l", "team=search")
    assert code == 0 and "smol" in out

    code, out = run(
        registry, "routes", "put", "--name", "chat", "--arm", "control:smol@1=90",
        "--arm", "smol@2=10", "--fallback", "smol", "--sticky", "--objective", "latency",
    )  # fmt: skip
    assert code == 0, out
    assert "90.0%" in out
    code, out = run(registry, "routes", "list", "--json")
    route = json.loads(out)
    assert [a["name"] for a in route["arms"]] == ["control", "smol@2"]
    assert route["sticky_sessions"] is True

    code, out = run(registry, "models", "delete", "smol@1")
    assert code == 1 and "FAILED_PRECONDITION" in out
    code, out = run(registry, "routes", "put", "--name", "bad", "--arm", "smol@1=0")
    assert code == 1 and "route.arms[0].weight" in out
    code, out = run(registry, "routes", "delete", "chat")
    assert code == 0, out
    code, out = run(registry, "models", "delete", "smol@1")
    assert code == 0, out


def test_writes_without_the_token_are_refused(registry: str) -> None:
    code, out = run(registry, "routes", "delete", "x", token="")
    assert code == 1 and "UNAUTHENTICATED" in out
    code, out = run(registry, "routes", "delete", "x", token="wrong")
    assert code == 1 and "PERMISSION_DENIED" in out
    code, out = run(registry, "routes", "list", token="")
    assert code == 0


def test_registry_migrate(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    result = CliRunner().invoke(app, ["registry", "migrate", "--database-url", url])
    again = CliRunner().invoke(app, ["registry", "migrate", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "empty -> 0004" in result.output
    assert "0004 -> 0004" in again.output


def test_a_route_s_response_cache_is_set_shown_and_bounded(registry: str, tmp_path: Path) -> None:
    code, out = run(
        registry, "models", "register", "--name", "cached", "--version", "1",
        "--uri", "file:///c.gguf", "--sha256", "ef" * 32, "--format", "gguf", "--chat",
    )  # fmt: skip
    assert code == 0, out
    spec = tmp_path / "route.yaml"
    spec.write_text(
        "name: faq\narms: [{model: cached@1, weight: 1}]\n"
        "responseCache: {enabled: true, ttlSeconds: 600}\n"
    )

    code, out = run(registry, "routes", "put", "-f", str(spec), "--cache-per-key")
    assert code == 0, out
    assert "response cache: on, ttl 600 s, per API key" in out
    code, out = run(registry, "routes", "put", "-f", str(spec), "--cache-ttl", "0", "--json")
    policy = json.loads(out)["response_cache"]
    assert policy == {"enabled": True}  # 0: the default TTL; per key only from the flag
    code, out = run(registry, "routes", "show", "faq")
    assert "response cache: on, ttl 300 s, shared by all keys" in out

    code, out = run(registry, "routes", "put", "-f", str(spec), "--cache-ttl", "86401")
    assert code == 1 and "route.response_cache.ttl_seconds" in out and "86400" in out
    code, out = run(registry, "routes", "put", "-f", str(spec), "--no-cache")
    assert code == 0 and "response cache: off" in out
    assert run(registry, "routes", "delete", "faq")[0] == 0


def test_a_rollout_is_put_shown_and_controlled(registry: str, tmp_path: Path) -> None:
    for version in ("1", "2"):
        code, out = run(
            registry, "models", "register", "--name", "canaried", "--version", version,
            "--uri", "file:///c.gguf", "--sha256", "ab" * 32, "--format", "gguf", "--chat",
        )  # fmt: skip
        assert code == 0, out
    rollout = [
        "--rollout-canary", "new", "--rollout-baseline", "old",
        "--rollout-steps", "5,50,100", "--rollout-min-seconds", "60",
        "--rollout-min-requests", "100", "--max-error-rate-increase", "0.01",
        "--max-ttft-p95-ratio", "1.5", "--promote",
    ]  # fmt: skip
    arms = ["--arm", "old:canaried@1=1", "--arm", "new:canaried@2=1"]
    code, out = run(registry, "routes", "put", "--name", "canary", *arms, *rollout, "--json")
    assert code == 0, out
    stored = json.loads(out)
    assert stored["rollout"]["steps_percent"] == [5, 50, 100]
    assert stored["rollout"]["promote_on_success"] is True
    assert [a["weight"] for a in stored["arms"]] == [95, 5]
    code, out = run(registry, "routes", "show", "canary")
    assert "progressing at step 0, canary 5%" in out and "rollout started at 5%" in out

    code, out = run(registry, "routes", "rollout", "canary", "pause", "--reason", "holiday")
    assert code == 0 and "paused at step 0" in out and "holiday" in out, out
    code, out = run(registry, "routes", "rollout", "canary", "pause")
    assert code == 1 and "cannot pause" in out, out
    code, out = run(registry, "routes", "rollout", "canary", "abort")
    assert code == 0 and "aborted at step 0, canary 0%" in out, out
    code, out = run(registry, "routes", "put", "--name", "canary", *arms, "--rollout-steps", "50")
    assert code == 1 and "route.rollout.steps_percent" in out, out
    assert run(registry, "routes", "delete", "canary")[0] == 0
