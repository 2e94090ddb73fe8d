"""The README's and docs' examples, run as written against a live `modelyard up`.

`up` runs on its documented default ports (router 50050, registry 50051, worker 50052, the
OpenAI front 50080), so a wrong port, a missing `.venv/bin/` prefix or an example that
never runs fails here. Blocks that cannot run on a test machine are listed with their
reason in tests/docs_blocks.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelyard.cli.up import HTTP_PORT_OFFSET
from modelyard.local_mesh import port_is_free
from tests.docs_blocks import ROOT, RUN, SKIP, Block, all_blocks, find

BLOCK_TIMEOUT_S = 300


def test_every_block_is_run_or_skipped_with_a_reason() -> None:
    phrases = (*RUN, *SKIP)
    for block in all_blocks():
        listed = [phrase for phrase in phrases if phrase in block.text]
        assert len(listed) == 1, f"{block.where}: add it to RUN or SKIP ({listed})"
    for phrase in phrases:
        find(phrase)  # no stale entry: each phrase names exactly one block


# `up`'s defaults: router, registry, worker and the OpenAI front.
DEFAULT_PORTS = (50050, 50051, 50052, 50050 + HTTP_PORT_OFFSET)
PORTS_WAIT_S = 120.0


def wait_for_default_ports() -> None:
    """The default ports lie in the kernel's ephemeral range (32768-60999 here), so an
    outgoing connection of this suite may hold one as its source port for a moment (seen
    once in a random-order run: "port(s) 50050 already in use"). Wait that out; a port
    still taken after PORTS_WAIT_S is a listener left running, and fails naming it."""
    deadline = time.monotonic() + PORTS_WAIT_S
    while busy := [port for port in DEFAULT_PORTS if not port_is_free(port)]:
        if time.monotonic() > deadline:
            pytest.fail(f"default ports still taken after {PORTS_WAIT_S:.0f} s: {_holders(busy)}")
        time.sleep(0.5)


def _holders(ports: list[int]) -> str:
    """Each busy port's sockets, as /proc/net/tcp lists them (local, remote, TCP state)."""
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                local, remote, state = row.split()[1:4]
                if int(local.rsplit(":", 1)[1], 16) in ports:
                    found.append(f"{local} -> {remote} state {state}")
    return "; ".join(found) or f"{ports} (no socket listed)"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("docs-home")
    wait_for_default_ports()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(home / "config"),  # a user's own contexts must not leak in
        "COLUMNS": "120",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard",
            "up",
            "--prompt",
            "",
            "--threads",
            "2",
            "--data-dir",
            str(home / "data"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    for line in process.stdout:
        lines.append(line)
        if "Serving." in line or time.monotonic() > deadline:
            break
    if not any("Serving." in line for line in lines):
        process.kill()
        pytest.fail("`modelyard up` on the default ports did not serve:\n" + "".join(lines))
    try:
        yield env
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def _run(block: Block, env: dict[str, str], stdin: str = "") -> str:
    command = ["bash", "-euo", "pipefail", "-c", block.text]
    if block.language == "python":
        command = [sys.executable, "-c", block.text]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_readme_tour(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[0]), mesh, stdin="/exit\n")
    assert '"finished"' in out  # the --json line printed every protocol event
    assert "smollm2-135m-instruct" in out  # models list


def test_readme_python_sdk(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[1]), mesh)
    assert "worker-0" in out  # stream.started.worker_id


def test_readme_plain_grpc(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[2]), mesh)
    assert "input_tokens" in out


def test_readme_catalogue_routes_and_ab(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[3]), mesh)
    assert "candidate" in out and "control" in out  # stats per arm after the route's call


def test_readme_contexts_file(mesh: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(find(RUN[4]).text)
    env = {**mesh, "MODELYARD_CONFIG": str(config)}
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "modelyard"), "--context", "local", "models", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smollm2-135m-instruct" in done.stdout


def test_readme_openai_sdk(mesh: dict[str, str]) -> None:
    assert _run(find(RUN[5]), mesh).strip()


def test_readme_registry_sdk(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[6]), mesh)
    assert "smollm2-sdk 1 STAGE_STAGING" in out
    assert "sdk-chat" in out  # the watch saw the route's write


def test_operations_local_metrics(mesh: dict[str, str]) -> None:
    out = _run(find(RUN[7]), mesh)
    assert "modelyard_router_requests_total{" in out and 'code="OK"' in out
    assert "smollm2-135m-instruct" in out  # the stats table after the metrics


def test_operations_adapter_rule_is_what_the_chart_asks_for(tmp_path: Path) -> None:
    """The prometheus-adapter rule names the metric the chart's HPA reads, maps the label
    the ServiceMonitor adds, and both its queries are PromQL (promtool parses them)."""
    rule = yaml.safe_load(find(RUN[8]).text)["rules"]["external"][0]
    metric = rule["name"]["as"]
    hpa = (ROOT / "charts" / "modelyard" / "templates" / "workers.yaml").read_text()
    assert f"name: {metric}" in hpa and "modelyard_io_pool:" in hpa
    assert rule["seriesQuery"].startswith(metric + "{")
    assert set(rule["resources"]["overrides"]) <= {"namespace", "modelyard_io_pool"}
    rendered = (
        rule["metricsQuery"]
        .replace("<<.Series>>", metric)
        .replace("<<.LabelMatchers>>", 'namespace="ml",modelyard_io_pool="cpu"')
        .replace("<<.GroupBy>>", "namespace")
    )
    rules = tmp_path / "adapter-queries.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "adapter",
                        "rules": [
                            {"record": "adapter:series", "expr": rule["seriesQuery"]},
                            {"record": "adapter:metrics", "expr": rendered},
                        ],
                    }
                ]
            }
        )
    )
    done = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
