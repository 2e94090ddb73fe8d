"""Every query the chart uses (alerts, dashboard panels, KEDA triggers, the HPA's External
metric) runs unchanged on a real Prometheus scraping a local sim mesh, with the target
labels the chart's ServiceMonitor adds (namespace, the pool from podTargetLabels).

The mesh: registry, router and two sim workers standing for the pools of
tests/ops/prom-values.yaml; one model decodes one sequence at a time so requests queue
(and overflow a short queue: non-OK codes), another answers fast. While traffic runs, the
scale-from-zero wake query of the pool that scales to zero must read > 0; then each query
must return a series carrying the labels its rule, panel or autoscaler reads.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh, free_port
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.ops.chart import ROOT, Rendered, helm_template, parse
from tests.ops.chart_queries import Query, chart_queries
from tests.ops.prom import NAMESPACE
from tests.ops.prometheus_server import PrometheusServer, Sample, Target
from tests.robustness.sim_mesh import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    FAST,
    mesh_env,
    sim_model,
    wait_served,
)

pytestmark = pytest.mark.integration

VALUES = ROOT / "tests" / "ops" / "prom-values.yaml"
QUEUED, FAST_MODEL = "sim.queued", "sim-fast"  # the pools' models in prom-values.yaml
ROUTE = "fast-ab"  # A/B arms on the fast model: the arm panels need arm labels
POOLS = ("burst", "steady")  # worker-0 stands for burst, worker-1 for steady
# One sequence at a time, 40 ms a token: a few concurrent requests wait in the queue.
SLOW = {**FAST, "sim_decode_ms_per_token": "40", "sim_max_sequences": "1"}
QUERIES_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def rendered(helm: Path) -> Rendered:
    result = helm_template(helm, "-f", str(VALUES))
    assert result.returncode == 0, result.stderr
    return Rendered("prom-values", parse(result.stdout))


def _pod_target_labels(rendered: Rendered) -> list[str]:
    """The ServiceMonitor's podTargetLabels as Prometheus names them (modelyard.io/pool ->
    modelyard_io_pool)."""
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    return [re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in monitor["spec"]["podTargetLabels"]]


def _target(name: str, port: int, component: str, pool: str = "") -> Target:
    """A target labelled as prometheus-operator labels a ServiceMonitor endpoint."""
    job = f"modelyard-{name}"
    labels = {"namespace": NAMESPACE, "service": job, "endpoint": "metrics", "pod": f"{job}-0"}
    labels["app_kubernetes_io_component"] = component
    if pool:
        labels["modelyard_io_pool"] = pool
    return Target(job, f"127.0.0.1:{port}", labels)


@dataclass
class Stack:
    mesh: LocalMesh
    prometheus: PrometheusServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, rendered: Rendered) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("promql")
    ports = {"registry": free_port(), "router": free_port()}
    workers = [free_port() for _ in POOLS]
    env = {f"MODELYARD_{s.upper()}_METRICS_PORT": str(p) for s, p in ports.items()}
    # A short queue: a burst overflows it, and the router counts the refusals.
    env["MODELYARD_WORKER_MAX_QUEUED_REQUESTS"] = "2"
    mesh = LocalMesh(
        data_dir=data, env=mesh_env(env), worker_ports=(0, 0), worker_metrics_ports=workers
    )
    assert set(_pod_target_labels(rendered)) == {"modelyard_io_pool", "app_kubernetes_io_component"}
    targets = [_target(s, p, s) for s, p in ports.items()]
    targets += [
        _target(f"worker-{pool}", p, "worker", pool) for pool, p in zip(POOLS, workers, strict=True)
    ]
    prometheus = PrometheusServer(data, targets)
    mesh.start()
    try:
        prometheus.start()
        _register(mesh, data)
        yield Stack(mesh, prometheus)
    finally:
        prometheus.stop()
        mesh.stop()


def _register(mesh: LocalMesh, data: Path) -> None:
    artifact = data / "sim.bin"
    artifact.write_bytes(b"a simulated model\n")
    with grpc.insecure_channel(mesh.registry_address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        for model in (sim_model(artifact, QUEUED, SLOW), sim_model(artifact, FAST_MODEL)):
            registry.RegisterModel(
                registry_pb2.RegisterModelRequest(model=model),
                timeout=30,
                metadata=bearer_metadata(ADMIN_TOKEN),
            )
        arms = [model_pb2.RouteArm(name=n, model=f"{FAST_MODEL}@1", weight=1) for n in "ab"]
        registry.PutRoute(
            registry_pb2.PutRouteRequest(route=model_pb2.Route(name=ROUTE, arms=arms)),
            timeout=30,
            metadata=bearer_metadata(ADMIN_TOKEN),
        )
    for name in (QUEUED, FAST_MODEL, ROUTE):
        wait_served(mesh.router_address, name)


class Traffic:
    """Client threads that keep requests coming until stopped: a burst on the queued
    model (more at once than the workers run and queue: some are refused) and one client
    on the fast model's A/B route."""

    def __init__(self, router: str) -> None:
        self._router = router
        self._stop = threading.Event()
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads = [self._thread(QUEUED, 10) for _ in range(16)]
        self._threads.append(self._thread(ROUTE, 8))

    def _thread(self, model: str, max_tokens: int) -> threading.Thread:
        return threading.Thread(target=self._loop, args=(model, max_tokens), daemon=True)

    def _loop(self, model: str, max_tokens: int) -> None:
        request = router_pb2.GenerateRequest(
            model=model, prompt="count", sampling=common_pb2.SamplingParams(max_tokens=max_tokens)
        )
        with grpc.insecure_channel(self._router) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            while not self._stop.is_set():
                try:
                    for _ in stub.Generate(
                        request, timeout=30, metadata=bearer_metadata(CLIENT_KEY)
                    ):
                        pass
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                with self._lock:
                    self.outcomes[code] = self.outcomes.get(code, 0) + 1

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def _value(sample: Sample) -> float:
    return float(sample["value"][1])


# Empty (so absent in Prometheus) on requests that named no route: panels grouping by it
# need it on some series, not all.
OPTIONAL_LABELS = frozenset({"arm"})


def _problem(query: Query, result: list[Sample]) -> str | None:
    """Why `result` does not serve `query` (None when it does)."""
    if not result:
        return "no series"
    missing = {
        lb for s in result for lb in query.labels - OPTIONAL_LABELS if not s["metric"].get(lb)
    }
    missing |= {
        lb for lb in query.labels & OPTIONAL_LABELS if not any(s["metric"].get(lb) for s in result)
    }
    if missing:
        return f"series without {sorted(missing)}: {[s['metric'] for s in result][:3]}"
    if all(math.isnan(_value(s)) for s in result):
        return "only NaN"
    return None


def _poll(check: Callable[[], dict[str, str]], timeout_s: float) -> dict[str, str]:
    """Re-run `check` (which returns the problems left) until none or the deadline."""
    deadline = time.monotonic() + timeout_s
    problems = check()
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = check()
    return problems


def _wake_query(rendered: Rendered) -> str:
    (scaled,) = [s for s in rendered.of_kind("ScaledObject") if s["spec"]["minReplicaCount"] == 0]
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["name"] == "router-demand"]
    query: str = trigger["metadata"]["query"]
    return query


@pytest.mark.timeout(600)
def test_every_chart_query_returns_labelled_series(stack: Stack, rendered: Rendered) -> None:
    prom = stack.prometheus
    queries = chart_queries(rendered.manifests, NAMESPACE)
    assert len(queries) >= 25, [q.where for q in queries]
    wake = _wake_query(rendered)
    pools = [q for q in queries if q.where.startswith("ScaledObject/") and "queued" in q.where]

    def awake() -> dict[str, str]:
        # While requests for the pool's model arrive, the wake trigger reads > 0 (KEDA
        # activates above activationThreshold 0) and some pool's queue shows up.
        wake_value = max((_value(s) for s in prom.query(wake)), default=0.0)
        queued = sum(_value(s) for q in pools for s in prom.query(q.expr))
        left = {}
        if not wake_value > 0:
            left["wake"] = f"{wake} = {wake_value}"
        if not queued > 0:
            left["queued"] = f"no queued tokens through {[q.expr for q in pools]}"
        return left

    def served() -> dict[str, str]:
        left = {}
        for q in queries:
            problem = _problem(q, prom.query(q.expr))
            if problem is not None:
                left[q.where] = f"{q.expr}: {problem}"
        return left

    with Traffic(stack.mesh.router_address) as traffic:
        started = time.monotonic()
        assert not _poll(awake, QUERIES_TIMEOUT_S), (awake(), traffic.outcomes)
        woke_s = time.monotonic() - started
        problems = _poll(served, QUERIES_TIMEOUT_S)
    assert not problems, "\n".join(
        [*(f"{k}: {v}" for k, v in problems.items()), str(traffic.outcomes)]
    )
    assert traffic.outcomes.get("OK", 0) > 0 and len(traffic.outcomes) > 1, traffic.outcomes
    print(f"awake after {woke_s:.1f} s; all served after {time.monotonic() - started:.1f} s")


def test_wake_query_stays_zero_for_other_models(stack: Stack, rendered: Rendered) -> None:
    """The wake regex matches the pool's model with any version and nothing else: the same
    query for a model no one asks for reads 0 (vector(0), no series matched)."""
    wake = _wake_query(rendered)
    other = wake.replace("sim\\\\.queued", "sim-fast-other")
    assert other != wake
    assert [_value(s) for s in stack.prometheus.query(other)] == [0.0]
