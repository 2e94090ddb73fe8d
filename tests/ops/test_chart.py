"""The Helm chart, rendered by the real (pinned) helm for each value set in charts/modelyard/ci.

The `rendered` fixture runs scripts/chart-check.sh: helm lint --strict, helm template,
kubernetes-validate --strict at the pinned Kubernetes version, and the custom resources against
charts/schemas. These tests then check what validation cannot: the chart's own promises.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops import crcheck
from tests.ops.chart import ROOT, Rendered, helm_template, parse, pod_specs

K8S_VERSION = "1.35.0"
VALUE_SETS = ("minimal-cpu", "gpu-keda", "external-tls")
MODELYARD_CONTAINERS = {"registry", "router", "worker"}


def test_chart_check_renders_every_value_set(rendered: dict[str, Rendered]) -> None:
    assert set(VALUE_SETS) <= set(rendered)
    for r in rendered.values():
        kinds = {m["kind"] for m in r.manifests}
        assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Pod"} <= kinds


def test_helm_script_is_idempotent_and_pinned(helm: Path) -> None:
    again = subprocess.run(
        ["bash", "scripts/helm.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == str(helm)
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith("v4.1.4")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_hardened_and_probed(rendered: dict[str, Rendered], value_set: str) -> None:
    r = rendered[value_set]
    for where, spec in pod_specs(r.manifests):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"].get("requests"), where
            if c["name"] in MODELYARD_CONTAINERS:
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    handler = c[probe]
                    if value_set == "external-tls":
                        # Kubernetes' grpc probe has no TLS: the image checks health over TLS.
                        assert "grpc_health" in handler["exec"]["command"][-1], where
                    else:
                        assert handler["grpc"]["port"] == c["ports"][0]["containerPort"], where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_workloads_have_pdbs_and_spread(rendered: dict[str, Rendered], value_set: str) -> None:
    r = rendered[value_set]
    pdbs = [p["spec"]["selector"]["matchLabels"] for p in r.of_kind("PodDisruptionBudget")]
    for d in r.of_kind("Deployment"):
        labels = d["spec"]["selector"]["matchLabels"]
        component = labels["app.kubernetes.io/component"]
        if component == "jaeger":
            continue
        assert labels in pdbs, f"no PodDisruptionBudget for {d['metadata']['name']}"
        assert d["spec"]["template"]["spec"]["topologySpreadConstraints"], component


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def modelyard_containers(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (where, c)
        for where, spec in pod_specs(r.manifests)
        for c in spec["containers"]
        if c["name"] in MODELYARD_CONTAINERS
    ]


def test_dev_switch_wires_in_cluster_consul_and_jaeger(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-keda"]
    consul = r.get("StatefulSet", "modelyard-consul")
    image = consul["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("hashicorp/consul:")
    assert r.get("Service", "modelyard-jaeger")["spec"]["ports"][0]["port"] == 4317
    for where, c in modelyard_containers(r):
        env = env_of(c)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://modelyard-jaeger:4317", where
        assert env["MODELYARD_CONSUL_ADDRESS"] == "modelyard-consul:8500", where
        assert env["MODELYARD_CONSUL_SCHEME"] == "http", where
        assert env["MODELYARD_CONSUL_ADVERTISE_HOST"] == "$(POD_IP)", where


def test_external_consul_postgres_tls(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-tls"]
    assert not r.of_kind("StatefulSet"), "external Consul: no in-cluster server"
    registry = r.get("Deployment", "modelyard-registry")
    assert registry["spec"]["replicas"] == 3
    assert "strategy" not in registry["spec"]
    assert not r.of_kind("PersistentVolumeClaim")
    for where, c in modelyard_containers(r):
        env = env_of(c)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
        assert env["MODELYARD_CONSUL_ADDRESS"] == "consul-server.consul.svc:8501", where
        assert env["MODELYARD_CONSUL_SCHEME"] == "https", where
        assert env["MODELYARD_CONSUL_CA_FILE"] == "/etc/modelyard/consul-ca/ca.crt", where
        assert env["MODELYARD_CONSUL_TOKEN"]["secretKeyRef"]["name"] == "modelyard-consul-token"
        service = c["name"].upper()
        assert env[f"MODELYARD_{service}_TLS_CERT_FILE"] == "/etc/modelyard/tls/tls.crt", where
        assert env[f"MODELYARD_{service}_TLS_MTLS"] == "true", where
        admin = env[f"MODELYARD_{service}_ADMIN_TOKEN"]["secretKeyRef"]
        assert admin["name"] == "modelyard-admin", where
    dsn = env_of(registry["spec"]["template"]["spec"]["containers"][0])
    assert dsn["MODELYARD_REGISTRY_DATABASE_URL"]["secretKeyRef"]["name"] == "modelyard-registry-db"
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"] == "modelyard-admin"]


def test_minimal_cpu_is_static_sqlite(rendered: dict[str, Rendered]) -> None:
    r = rendered["minimal-cpu"]
    registry = r.get("Deployment", "modelyard-registry")
    assert registry["spec"]["replicas"] == 1
    assert registry["spec"]["strategy"]["type"] == "Recreate"
    assert r.get("PersistentVolumeClaim", "modelyard-registry")
    router = r.get("Deployment", "modelyard-router")
    env = env_of(router["spec"]["template"]["spec"]["containers"][0])
    assert env["MODELYARD_ROUTER_WORKERS"] == "modelyard-worker-cpu:50052"
    assert "MODELYARD_CONSUL_ADDRESS" not in env
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    ports = {p["name"]: p["port"] for p in r.get("Service", "modelyard-router")["spec"]["ports"]}
    assert ports == {"grpc": 50050, "http": 8080, "metrics": 9464}
    assert not r.of_kind("HorizontalPodAutoscaler")


def test_worker_pools_autoscale_on_queued_tokens(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-keda"]
    a100 = r.get("ScaledObject", "modelyard-worker-a100")
    assert a100["spec"]["minReplicaCount"] == 1
    (trigger,) = a100["spec"]["triggers"]
    assert "modelyard_worker_queued_tokens" in trigger["metadata"]["query"]
    assert 'modelyard_io_pool="a100"' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "32768"
    burst = r.get("ScaledObject", "modelyard-worker-l4-burst")
    assert burst["spec"]["minReplicaCount"] == 0
    demand = burst["spec"]["triggers"][1]["metadata"]["query"]
    assert 'model=~"qwen2.5-7b-instruct"' in demand
    hpa = r.get("HorizontalPodAutoscaler", "modelyard-worker-cpu")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "modelyard_worker_queued_tokens"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "4096"}
    for pool in ("a100", "l4-burst", "cpu"):
        assert "replicas" not in r.get("Deployment", f"modelyard-worker-{pool}")["spec"], pool
    gpu = r.get("Deployment", "modelyard-worker-a100")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["containers"][0]["image"] == "ghcr.io/modelyard/modelyard:0.1.0-cuda"
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    preload_cm = r.get("ConfigMap", "modelyard-worker-a100-preload")
    preload = yaml.safe_load(preload_cm["data"]["preload.yaml"])
    assert preload[0]["model"]["name"] == "llama-3.1-8b-instruct"
    router_hpa = r.get("HorizontalPodAutoscaler", "modelyard-router")
    assert router_hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_dashboard_configmap_and_helm_test(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-keda"]
    cm = r.get("ConfigMap", "modelyard-dashboard-modelyard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["modelyard.json"])["uid"] == "modelyard-mesh"
    test_pod = r.get("Pod", "modelyard-test")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert '"modelyard", "generate"' in script
    assert '"llama-3.1-8b-instruct"' in script
    compile(script, "helm-test", "exec")  # the rendered Python is valid


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"registry": {"database": {"type": "postgresql"}}}, "existingSecret"),
        ({"tls": {"enabled": True}}, "existingSecret"),
        (
            {
                "workerPools": [
                    {"name": "Bad_Name", "image": "cpu", "engine": "llama_cpp", "resources": {}}
                ]
            },
            "workerPools/0/name",
        ),
        (
            {
                "workerPools": [
                    {
                        "name": "p",
                        "image": "cpu",
                        "engine": "llama_cpp",
                        "resources": {},
                        "autoscaling": {"enabled": True, "kind": "hpa", "minReplicas": 0},
                    }
                ]
            },
            "minReplicas",
        ),
    ],
)
def test_values_schema_rejects(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm_template(helm, "-f", str(path))
    assert result.returncode != 0
    assert message in result.stderr


def test_kubernetes_validate_is_strict(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    deployment = copy.deepcopy(rendered["minimal-cpu"].get("Deployment", "modelyard-router"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "grpcc" in result.stdout


def test_custom_resource_schemas_catch_mistakes(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu-keda"]
    scaled = copy.deepcopy(r.get("ScaledObject", "modelyard-worker-a100"))
    assert crcheck.check(scaled, K8S_VERSION) == []
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 32768  # KEDA wants strings
    del scaled["spec"]["scaleTargetRef"]
    problems = crcheck.check(scaled, K8S_VERSION)
    assert any("threshold" in p for p in problems), problems
    assert any("scaleTargetRef" in p for p in problems), problems
    rule = copy.deepcopy(r.get("PrometheusRule", "modelyard"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = 600
    assert crcheck.check(rule, K8S_VERSION)
    monitor = copy.deepcopy(r.get("ServiceMonitor", "modelyard"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    assert crcheck.check(monitor, K8S_VERSION)
    typo = {"apiVersion": "keda.sh/v1", "kind": "ScaledObject", "metadata": {"name": "x"}}
    assert "neither" in crcheck.check(typo, K8S_VERSION)[0]


def test_defaults_render(helm: Path) -> None:
    result = helm_template(helm)
    assert result.returncode == 0, result.stderr
    kinds = {m["kind"] for m in parse(result.stdout)}
    assert "ScaledObject" not in kinds
    assert "Secret" in kinds  # the generated admin token
