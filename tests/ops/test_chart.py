"""The Helm chart, rendered by the real (pinned) helm for each value set in charts/modelyard/ci.

The `rendered` fixture runs scripts/chart-check.sh: helm lint --strict, helm template,
kubernetes-validate --strict at the pinned Kubernetes version, and the custom resources against
charts/schemas. These tests then check what validation cannot: the chart's own promises.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.ops import crcheck
from tests.ops.chart import (
    CHART,
    ROOT,
    Rendered,
    SecretRef,
    helm_template,
    parse,
    pod_specs,
    secret_refs,
    values_of,
)
from worker.main import PRELOADED
from worker.residency.preload import read_preload

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
                    if value_set != "minimal-cpu":
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
        assert env[f"MODELYARD_{service}_TLS_MTLS"] == str(service != "ROUTER").lower(), where
        if service == "REGISTRY":
            admin = env["MODELYARD_REGISTRY_ADMIN_TOKEN"]["secretKeyRef"]
            assert admin["name"] == "modelyard-admin", where
        if service == "ROUTER":
            keys = env["MODELYARD_ROUTER_API_KEYS"]["secretKeyRef"]
            assert keys["name"] == "modelyard-client-keys", where
    dsn = env_of(registry["spec"]["template"]["spec"]["containers"][0])
    assert dsn["MODELYARD_REGISTRY_DATABASE_URL"]["secretKeyRef"]["name"] == "modelyard-registry-db"
    secrets = {s["metadata"]["name"] for s in r.of_kind("Secret")}
    assert not {"modelyard-admin", "modelyard-registry-admin-token"} & secrets
    assert "modelyard-router-api-keys" not in secrets


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
    # Any version of the pool's model, its "." literal (tests/ops/test_promql_live.py runs it).
    assert r'model=~"(qwen2\\.5-7b-instruct)(@.+)?"' in demand
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
    assert preload[0]["model"] == "llama-3.1-8b-instruct@1"
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
    assert "Client(" in script and 'api_key=os.environ["MODELYARD_API_KEY"]' in script
    assert '"llama-3.1-8b-instruct"' in script
    compile(script, "helm-test", "exec")  # the rendered Python is valid


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"registry": {"database": {"type": "postgresql"}}}, "existingSecret"),
        ({"tls": {"certManager": {"enabled": True}}}, "issuerRef/name"),
        ({"adminToken": {"value": "x"}}, "additional properties 'adminToken' not allowed"),
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


# -- Secure by default: one credential per role, one certificate per service, NetworkPolicies ----

# The rendered sets these tests read: the CI value sets and the chart's defaults.
SECURE_SETS = (*VALUE_SETS, "defaults")
# auth.<credential> -> the Secret the chart generates for it (unless existingSecret).
CREDENTIAL_SECRETS = {
    "registryAdmin": "modelyard-registry-admin-token",
    "registryReaderRouter": "modelyard-registry-reader-router",
    "outcomeWriterRouter": "modelyard-outcome-writer-router",
    "registryReaderWorker": "modelyard-registry-reader-worker",
    "workerOperator": "modelyard-worker-operator-token",
    "workerApiKey": "modelyard-worker-api-key",
    "routerApiKeys": "modelyard-router-api-keys",
    "routerOperator": "modelyard-router-operator-key",
}
# Which credentials each role's pods may read: the ones they present and the ones they check.
ROLE_CREDENTIALS = {
    "registry": {
        "registryAdmin",
        "registryReaderRouter",
        "outcomeWriterRouter",
        "registryReaderWorker",
    },
    "router": {
        "routerApiKeys",
        "routerOperator",
        "registryReaderRouter",
        "outcomeWriterRouter",
        "workerApiKey",
    },
    "worker": {"workerOperator", "workerApiKey", "registryReaderWorker"},
    "test": {"routerApiKeys:test"},
    "consul": set(),
    "jaeger": set(),
}
REFERENCE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}@[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@pytest.fixture(scope="session")
def defaults(helm: Path) -> Rendered:
    """The chart's default values, rendered and validated as chart-check.sh validates."""
    result = helm_template(helm)
    assert result.returncode == 0, result.stderr
    manifests = parse(result.stdout)
    problems = [p for m in manifests for p in crcheck.check(m, K8S_VERSION)]
    assert problems == []
    return Rendered("defaults", manifests)


@pytest.fixture(scope="session")
def secure_sets(
    rendered: dict[str, Rendered], defaults: Rendered
) -> dict[str, tuple[Rendered, dict[str, Any]]]:
    """Each rendered set with the values it was rendered from."""
    out = {"defaults": (defaults, values_of())}
    for name in VALUE_SETS:
        out[name] = (rendered[name], values_of(CHART / "ci" / f"{name}-values.yaml"))
    return out


def role_of(component: str) -> str:
    return "worker" if component.startswith("worker-") else component


def pods_by_component(r: Rendered) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, kind/name, pod spec) of every workload of the release."""
    out = []
    for m in r.manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Pod"):
            spec = m["spec"] if m["kind"] == "Pod" else m["spec"]["template"]["spec"]
            labels = m["metadata"]["labels"]
            out.append(
                (
                    labels["app.kubernetes.io/component"],
                    f"{m['kind']}/{m['metadata']['name']}",
                    spec,
                )
            )
    return out


def credential_ref(values: dict[str, Any], credential: str) -> SecretRef:
    """Where a credential lives ("routerApiKeys:test": the helm test's own key)."""
    name, _, which = credential.partition(":")
    default_key = {"workerApiKey": "key", "routerApiKeys": "api-keys"}.get(name, "token")
    spec = {"existingSecret": "", "key": default_key, "testKey": "helm-test"}
    spec.update(values.get("auth", {}).get(name, {}))
    key = spec["testKey"] if which == "test" else spec["key"]
    return (spec["existingSecret"] or CREDENTIAL_SECRETS[name], key)


def allowed_refs(values: dict[str, Any], component: str) -> set[SecretRef]:
    """The Secrets a component's pods may read (table ROLE_CREDENTIALS, its own certificate,
    and the Secrets named in values that the services need: Consul token and CA, DSN)."""
    role = role_of(component)
    refs = {credential_ref(values, c) for c in ROLE_CREDENTIALS[role]}
    if values["tls"]["enabled"]:
        refs.add((f"modelyard-tls-{component}", None))
    if role in ("registry", "router", "worker"):
        consul = values["consul"]
        if consul["token"]["existingSecret"]:
            refs.add((consul["token"]["existingSecret"], consul["token"]["key"]))
        if consul["caSecret"]:
            refs.add((consul["caSecret"], None))
    if role == "registry" and values["registry"]["database"]["type"] == "postgresql":
        pg = values["registry"]["database"]["postgresql"]
        refs.add((pg["existingSecret"], pg["key"]))
    return refs


def test_defaults_are_secure(defaults: Rendered) -> None:
    """Default values: a NetworkPolicy per component, one Secret per credential (distinct
    names), the router's client keys with a generated default key, a certificate per service."""
    policies = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in defaults.of_kind("NetworkPolicy")
    }
    assert policies == {"registry", "router", "worker-cpu"}
    secrets = {s["metadata"]["name"]: s for s in defaults.of_kind("Secret")}
    assert set(CREDENTIAL_SECRETS.values()) <= set(secrets)
    assert len(set(CREDENTIAL_SECRETS.values())) == len(CREDENTIAL_SECRETS)
    keys = secrets["modelyard-router-api-keys"]["data"]
    listed = base64.b64decode(keys["api-keys"]).decode().split(",")
    default = base64.b64decode(keys["default"]).decode()
    test_key = base64.b64decode(keys["helm-test"]).decode()
    assert listed == [f"default:{default}", f"helm-test:{test_key}"]
    assert len(default) == 40 and default != test_key
    tokens = [
        base64.b64decode(next(iter(secrets[n]["data"].values())))
        for n in CREDENTIAL_SECRETS.values()
    ]
    assert len(set(tokens)) == len(tokens), "every generated credential is its own random value"
    for role in ("registry", "router", "worker-cpu", "test", "admin", "operator"):
        assert secrets[f"modelyard-tls-{role}"]["type"] == "kubernetes.io/tls", role


@pytest.mark.parametrize("value_set", SECURE_SETS)
def test_secrets_are_mounted_only_where_needed(
    secure_sets: dict[str, tuple[Rendered, dict[str, Any]]], value_set: str
) -> None:
    r, values = secure_sets[value_set]
    # Clients first: a credential in the wrong client's pod is the failure that matters most.
    order = ("test", "router", "worker", "consul", "jaeger", "registry")
    pods = sorted(pods_by_component(r), key=lambda p: order.index(role_of(p[0])))
    for component, where, spec in pods:
        refs = secret_refs(spec)
        allowed = allowed_refs(values, component)
        assert refs <= allowed, f"{where} reads {sorted(refs - allowed, key=str)}"
        role = role_of(component)
        needed = {credential_ref(values, c) for c in ROLE_CREDENTIALS[role]}
        assert needed <= refs, f"{where} lacks {sorted(needed - refs, key=str)}"


def container_env(r: Rendered, component_prefix: str) -> list[dict[str, Any]]:
    return [
        env_of(spec["containers"][0])
        for component, _, spec in pods_by_component(r)
        if component.startswith(component_prefix)
    ]


def ref_of(entry: Any) -> SecretRef:
    ref = entry["secretKeyRef"]
    return (ref["name"], ref["key"])


@pytest.mark.parametrize("value_set", SECURE_SETS)
def test_no_two_roles_share_a_credential(
    secure_sets: dict[str, tuple[Rendered, dict[str, Any]]], value_set: str
) -> None:
    r, _ = secure_sets[value_set]
    (registry,) = container_env(r, "registry")
    (router,) = container_env(r, "router")
    (test,) = container_env(r, "test")
    workers = container_env(r, "worker-")
    assert workers
    for worker in workers:
        credentials = {
            "registry admin": ref_of(registry["MODELYARD_REGISTRY_ADMIN_TOKEN"]),
            "router registry reader": ref_of(router["MODELYARD_ROUTER_REGISTRY_TOKEN"]),
            "worker registry reader": ref_of(worker["MODELYARD_WORKER_REGISTRY_TOKEN"]),
            "worker operator": ref_of(worker["MODELYARD_WORKER_ADMIN_TOKEN"]),
            "router-to-worker": ref_of(worker["MODELYARD_WORKER_API_KEY"]),
            "router clients": ref_of(router["MODELYARD_ROUTER_API_KEYS"]),
            "helm test client": ref_of(test["MODELYARD_API_KEY"]),
        }
        assert len(set(credentials.values())) == len(credentials), credentials
        secrets = [name for name, _ in list(credentials.values())[:6]]
        assert len(set(secrets)) == len(secrets), "one Secret per role"
        # The two ends of each credential read the same Secret key.
        assert ref_of(router["MODELYARD_ROUTER_WORKER_API_KEY"]) == credentials["router-to-worker"]
        readers = re.findall(r"\$\((\w+)\)", registry["MODELYARD_REGISTRY_READER_TOKENS"])
        assert {ref_of(registry[v]) for v in readers} == {
            credentials["router registry reader"],
            credentials["worker registry reader"],
        }
    assert "MODELYARD_ROUTER_ADMIN_TOKEN" not in router
    assert "MODELYARD_REGISTRY_ADMIN_TOKEN" not in router


@pytest.mark.parametrize("value_set", SECURE_SETS)
def test_router_gets_no_admin_token(
    secure_sets: dict[str, tuple[Rendered, dict[str, Any]]], value_set: str
) -> None:
    r, values = secure_sets[value_set]
    routers = container_env(r, "router")
    assert routers
    for env in routers:
        assert "MODELYARD_ROUTER_ADMIN_TOKEN" not in env
    admin = {credential_ref(values, "registryAdmin"), credential_ref(values, "workerOperator")}
    for env in routers:
        refs = {ref_of(v) for v in env.values() if isinstance(v, dict) and "secretKeyRef" in v}
        assert not refs & admin


def test_defaults_give_every_worker_and_router_a_key(defaults: Rendered) -> None:
    workers = container_env(defaults, "worker-")
    routers = container_env(defaults, "router")
    assert workers and routers
    for env in workers:
        assert ref_of(env["MODELYARD_WORKER_API_KEY"]) == ("modelyard-worker-api-key", "key")
    for env in routers:
        assert ref_of(env["MODELYARD_ROUTER_API_KEYS"]) == ("modelyard-router-api-keys", "api-keys")


def identity(values: dict[str, Any], role: str) -> str:
    td = values["tls"]["trustDomain"] or "modelyard.modelyard.modelyard"
    if values["tls"]["certManager"]["enabled"]:
        return f"spiffe://{td}/{role}"
    return f"{role}.identity.{td}"


def certificate_sans(
    secret: dict[str, Any],
) -> tuple[list[str], x509.Certificate, x509.Certificate]:
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), cert, ca


@pytest.mark.parametrize("value_set", ("defaults", "gpu-keda", "external-tls"))
def test_every_service_has_its_own_certificate_and_identity(
    secure_sets: dict[str, tuple[Rendered, dict[str, Any]]], value_set: str
) -> None:
    r, values = secure_sets[value_set]
    mounted: dict[str, str] = {}
    for component, where, spec in pods_by_component(r):
        if component == "jaeger":
            continue
        (tls,) = [v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == "tls"]
        assert tls == f"modelyard-tls-{component}", where
        mounted[component] = tls
    assert len(set(mounted.values())) == len(mounted)
    pools = [f"worker-{p['name']}" for p in values["workerPools"]]
    assert {"registry", "router", "test", *pools} <= set(mounted)
    roles = [*mounted, "admin", "operator"]
    if values["tls"]["certManager"]["enabled"]:
        certs = {c["spec"]["secretName"]: c["spec"] for c in r.of_kind("Certificate")}
        assert not [s for s in r.of_kind("Secret") if s["type"] == "kubernetes.io/tls"]
        for role in roles:
            spec = certs[f"modelyard-tls-{role}"]
            assert spec["uris"] == [identity(values, role)], role
            assert {"server auth", "client auth"} <= set(spec["usages"]), role
    else:
        secrets = {s["metadata"]["name"]: s for s in r.of_kind("Secret")}
        cas = set()
        for role in roles:
            names, cert, ca = certificate_sans(secrets[f"modelyard-tls-{role}"])
            assert identity(values, role) in names, role
            assert not [n for n in names if ".identity." in n and n != identity(values, role)]
            cert.verify_directly_issued_by(ca)
            cas.add(ca.fingerprint(hashes.SHA256()))
            service = {"registry": "modelyard-registry", "router": "modelyard-router"}.get(
                role, f"modelyard-{role}" if role.startswith("worker-") else None
            )
            if service:
                assert {service, f"{service}.modelyard.svc", "localhost"} <= set(names), role
        assert len(cas) == 1, "one CA signs every certificate"
    (registry,) = container_env(r, "registry")
    (router,) = container_env(r, "router")
    extra = values["tls"]["extraIdentities"]
    assert registry["MODELYARD_REGISTRY_ADMIN_IDENTITIES"].split(",") == [
        identity(values, "admin"),
        *extra["registryAdmins"],
    ]
    assert registry["MODELYARD_REGISTRY_READER_IDENTITIES"].split(",") == [
        identity(values, "router"),
        *(identity(values, p) for p in pools),
        *extra["registryReaders"],
    ]
    assert registry["MODELYARD_REGISTRY_TLS_MTLS"] == "true"
    assert router["MODELYARD_ROUTER_TLS_MTLS"] == "false"  # clients prove themselves with keys
    for worker in container_env(r, "worker-"):
        assert worker["MODELYARD_WORKER_TLS_MTLS"] == "true"
        assert worker["MODELYARD_WORKER_ROUTER_IDENTITIES"] == identity(values, "router")
        assert worker["MODELYARD_WORKER_OPERATOR_IDENTITIES"].split(",") == [
            identity(values, "operator"),
            *extra["workerOperators"],
        ]


def test_worker_preload_entries_are_references(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["gpu-keda"]
    preloads = [cm for cm in r.of_kind("ConfigMap") if cm["metadata"]["name"].endswith("-preload")]
    assert len(preloads) == 2
    for cm in preloads:
        for entry in yaml.safe_load(cm["data"]["preload.yaml"]):
            ref = entry if isinstance(entry, str) else entry["model"]
            assert isinstance(ref, str) and REFERENCE.match(ref), entry
            if isinstance(entry, dict):
                assert set(entry) <= {"model", "pin", "keep_alive_s"}, entry
    # Every value set's every pool: the worker's own parser reads its preload file.
    for name, rset in rendered.items():
        for cm in rset.of_kind("ConfigMap"):
            if cm["metadata"]["name"].endswith("-preload"):
                path = tmp_path / f"{name}-{cm['metadata']['name']}.yaml"
                path.write_text(cm["data"]["preload.yaml"])
                read_preload(path)  # INVALID_ARGUMENT naming the item if malformed
    for where, c in modelyard_containers(r):
        if c["name"] == "worker":
            env = env_of(c)
            assert env["MODELYARD_WORKER_REGISTRY_ADDRESS"] == "modelyard-registry:50051", where


def ingress_rules(r: Rendered, component: str) -> list[dict[str, Any]]:
    (policy,) = [
        p
        for p in r.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == component
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return list(policy["spec"]["ingress"])


def peers_for(rules: list[dict[str, Any]], port: str) -> list[Any]:
    """The `from` of every rule opening `port`; None for a rule open to all."""
    return [rule.get("from") for rule in rules if {"port": port} in rule.get("ports", [])]


def release_pods(component: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/instance": "modelyard"}
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"podSelector": {"matchLabels": labels}}


def test_network_policies_admit_only_the_callers(
    defaults: Rendered, rendered: dict[str, Rendered], helm: Path
) -> None:
    monitoring = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]
    worker = ingress_rules(defaults, "worker-cpu")
    assert peers_for(worker, "grpc") == [[release_pods("router"), release_pods("test")]]
    assert peers_for(worker, "metrics") == [monitoring]
    registry = ingress_rules(defaults, "registry")
    assert peers_for(registry, "grpc") == [[release_pods()]]
    assert peers_for(registry, "metrics") == [monitoring]
    router = ingress_rules(defaults, "router")
    assert peers_for(router, "grpc") == [None] and peers_for(router, "http") == [None]
    assert peers_for(router, "metrics") == [monitoring]
    # The dev Consul runs health checks against the workers.
    dev = rendered["gpu-keda"]
    for pool in ("a100", "l4-burst", "cpu"):
        (peers,) = peers_for(ingress_rules(dev, f"worker-{pool}"), "grpc")
        assert release_pods("consul") in peers
    assert ingress_rules(dev, "consul") and ingress_rules(dev, "jaeger")
    # Direct streams: clients reach the workers' gRPC port.
    result = helm_template(
        helm, "--set", "directStreams.enabled=true", "--set", "directStreams.ticketKeySecret=tk"
    )
    assert result.returncode == 0, result.stderr
    direct = Rendered("direct", parse(result.stdout))
    assert peers_for(ingress_rules(direct, "worker-cpu"), "grpc") == [None]
    off = helm_template(helm, "--set", "networkPolicy.enabled=false", "--set", "tls.enabled=false")
    assert off.returncode == 0, off.stderr
    assert not Rendered("off", parse(off.stdout)).of_kind("NetworkPolicy")


def _asks_for(handler: dict[str, Any]) -> str:
    """The health service name a probe checks ("" = the server as a whole)."""
    if "grpc" in handler:
        return str(handler["grpc"].get("service", ""))
    found = re.search(r"HealthCheckRequest\(service='([^']*)'\)", handler["exec"]["command"][-1])
    assert found, handler
    return found.group(1)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_workers_are_ready_once_their_preloads_are_warm(
    rendered: dict[str, Rendered], value_set: str
) -> None:
    workers = [
        d
        for d in rendered[value_set].of_kind("Deployment")
        if d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"].startswith("worker-")
    ]
    assert workers
    for d in workers:
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert _asks_for(c["readinessProbe"]) == PRELOADED, d["metadata"]["name"]
        # Alive (and started) while a long preload runs: only readiness waits for it.
        assert _asks_for(c["livenessProbe"]) == ""
        assert _asks_for(c["startupProbe"]) == ""


def test_artifact_credentials_reach_worker_pods_only(helm: Path, tmp_path: Path) -> None:
    pool = {
        "image": "cpu",
        "engine": "llama_cpp",
        "device": "cpu",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
    }
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "artifacts": {"credentialsSecret": "hub-creds"},
                "workerPools": [
                    {**pool, "name": "cpu"},
                    {**pool, "name": "s3", "credentialsSecret": "s3-creds"},
                ],
            }
        )
    )
    result = helm_template(helm, "-f", str(values))
    assert result.returncode == 0, result.stderr
    by_component = {}
    for where, spec in pod_specs(parse(result.stdout)):
        whole = {name for name, key in secret_refs(spec) if key is None}
        by_component[where] = whole & {"hub-creds", "s3-creds"}
    workers = {w: s for w, s in by_component.items() if "worker-" in w}
    assert sorted(workers.values(), key=sorted) == [{"hub-creds"}, {"s3-creds"}], workers
    others = {w: s for w, s in by_component.items() if "worker-" not in w}
    assert others and not any(others.values()), others


def test_the_shared_response_cache_url_reaches_routers_only(helm: Path) -> None:
    result = helm_template(
        helm,
        "--set",
        "router.responseCache.redisUrlSecret=cache-url",
        "--set",
        "router.responseCache.maxBytes=1024",
    )
    assert result.returncode == 0, result.stderr
    readers = {
        where
        for where, spec in pod_specs(parse(result.stdout))
        if ("cache-url", "url") in secret_refs(spec)
    }
    assert readers and all("router" in where for where in readers), readers
    router_env = {
        e["name"]: e.get("value")
        for where, spec in pod_specs(parse(result.stdout))
        if "router" in where
        for c in spec["containers"]
        for e in c.get("env", [])
    }
    assert router_env["MODELYARD_ROUTER_RESPONSE_CACHE_MAX_BYTES"] == "1024"
    assert "MODELYARD_ROUTER_RESPONSE_CACHE_REDIS_URL" in router_env


CACHE_POOL = {
    "image": "cpu",
    "engine": "llama_cpp",
    "device": "cpu",
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
}


@pytest.mark.parametrize(
    ("pool", "volume"),
    [
        ({}, {"emptyDir": {"sizeLimit": "20Gi"}}),
        ({"cacheSize": "7Gi"}, {"emptyDir": {"sizeLimit": "7Gi"}}),  # the older spelling
        ({"cache": {"type": "emptyDir", "size": "9Gi"}}, {"emptyDir": {"sizeLimit": "9Gi"}}),
        (
            {"cache": {"type": "hostPath"}},
            {"hostPath": {"path": "/var/lib/modelyard/cache", "type": "DirectoryOrCreate"}},
        ),
        (
            {"cache": {"type": "hostPath", "hostPath": "/mnt/models"}},
            {"hostPath": {"path": "/mnt/models", "type": "DirectoryOrCreate"}},
        ),
        (
            {"cache": {"type": "pvc", "claimName": "weights"}},
            {"persistentVolumeClaim": {"claimName": "weights"}},
        ),
    ],
)
def test_worker_cache_volume_types(
    helm: Path, tmp_path: Path, pool: dict[str, Any], volume: dict[str, Any]
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"workerPools": [{**CACHE_POOL, "name": "p", **pool}]}))
    result = helm_template(helm, "-f", str(values))
    assert result.returncode == 0, result.stderr
    [worker] = [spec for where, spec in pod_specs(parse(result.stdout)) if "worker-p" in where]
    [cache] = [v for v in worker["volumes"] if v["name"] == "cache"]
    assert cache == {"name": "cache", **volume}
    [mount] = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "cache"]
    assert mount["mountPath"] == "/var/cache/modelyard"  # MODELYARD_ARTIFACTS_CACHE_DIR's parent
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(result.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(rendered)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout[-2000:]


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"type": "pvc"}, "claimName"),
        ({"type": "nfs"}, "type"),
        ({"type": "hostPath", "hostPath": "relative/dir"}, "hostPath"),
    ],
)
def test_worker_cache_values_are_checked(
    helm: Path, tmp_path: Path, cache: dict[str, Any], message: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"workerPools": [{**CACHE_POOL, "name": "p", "cache": cache}]})
    )
    result = helm_template(helm, "-f", str(values))
    assert result.returncode != 0
    assert message in result.stderr
