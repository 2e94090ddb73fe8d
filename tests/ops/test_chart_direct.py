"""The chart with direct streams on: ticket keys, the reporter credential, and outcome reports
addressed to the router replica that issued the ticket (a StatefulSet behind a headless
Service). Rendered by the real helm and validated as scripts/chart-check.sh validates."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.ops import crcheck
from tests.ops.chart import CHART, Manifest, Rendered, helm_template, parse

K8S_VERSION = "1.35.0"
REPORTER = ("modelyard-outcome-reporter-worker", "token")
DIRECT = {
    "directStreams": {
        "enabled": True,
        "ticketKeySecret": "ticket-key",
        "keyId": "k2",
        "ttlSeconds": 20,
        "extraPublicKeys": [{"keyId": "k1", "key": "public-k1.pem"}],
    },
}


def render(helm: Path, tmp_path: Path, values: dict[str, Any]) -> Rendered:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    lint = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "-f", str(path)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    result = helm_template(helm, "-f", str(path))
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            K8S_VERSION,
            "-",
        ],
        input=result.stdout,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    manifests = parse(result.stdout)
    assert [p for m in manifests for p in crcheck.check(m, K8S_VERSION)] == []
    return Rendered("direct", manifests)


def container(workload: Manifest) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    return dict(spec["containers"][0])


def env_of(workload: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload)["env"]}


def ref(entry: Any) -> tuple[str, str]:
    key_ref = entry["secretKeyRef"]
    return (key_ref["name"], key_ref["key"])


def volume(workload: Manifest, name: str) -> dict[str, Any]:
    (found,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    (mount,) = [m for m in container(workload)["volumeMounts"] if m["name"] == name]
    assert mount["mountPath"] == "/etc/modelyard/tickets" and mount["readOnly"] is True
    return dict(found["secret"])


def test_direct_streams_wire_tickets_and_reports(helm: Path, tmp_path: Path) -> None:
    r = render(
        helm, tmp_path, {**DIRECT, "router": {"replicas": 3, "autoscaling": {"enabled": False}}}
    )
    assert not [d for d in r.of_kind("Deployment") if d["metadata"]["name"] == "modelyard-router"]
    router = r.get("StatefulSet", "modelyard-router")
    assert router["spec"]["serviceName"] == "modelyard-router-pods"
    headless = r.get("Service", "modelyard-router-pods")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    renv = env_of(router)
    assert renv["MODELYARD_ROUTER_ROUTER_ID"] == "$(POD_NAME)"
    assert renv["MODELYARD_ROUTER_TICKET_KEY"] == "k2:/etc/modelyard/tickets/private.pem"
    assert renv["MODELYARD_ROUTER_TICKET_TTL_S"] == "20"
    assert (
        renv["MODELYARD_ROUTER_OUTCOME_REPORTER_TOKENS"]
        == "workers:$(OUTCOME_REPORTER_TOKEN_WORKER)"
    )
    assert ref(renv["OUTCOME_REPORTER_TOKEN_WORKER"]) == REPORTER
    # The router mounts the private key only; workers the public keys only.
    key = volume(router, "ticket-key")
    assert key["secretName"] == "ticket-key"
    assert key["items"] == [{"key": "private.pem", "path": "private.pem"}]
    worker = r.get("Deployment", "modelyard-worker-cpu")
    wenv = env_of(worker)
    assert wenv["MODELYARD_WORKER_TICKET_KEYS"] == (
        "k2:/etc/modelyard/tickets/public.pem,k1:/etc/modelyard/tickets/extra-k1.pem"
    )
    assert volume(worker, "ticket-keys")["items"] == [
        {"key": "public.pem", "path": "public.pem"},
        {"key": "public-k1.pem", "path": "extra-k1.pem"},
    ]
    assert ref(wenv["MODELYARD_WORKER_OUTCOME_TOKEN"]) == REPORTER
    secret = r.get("Secret", REPORTER[0])
    assert len(base64.b64decode(secret["data"]["token"])) == 40
    # Each replica's router id (its pod name) maps to that replica's own DNS name.
    routers = json.loads(wenv["MODELYARD_WORKER_OUTCOME_ROUTERS"])
    pods = [f"modelyard-router-{i}" for i in range(3)]
    assert sorted(routers) == pods
    for pod, address in routers.items():
        assert address == f"{pod}.modelyard-router-pods.modelyard.svc.cluster.local:50050"
    # ... which the router's certificate names, for the worker's TLS check.
    crt = base64.b64decode(r.get("Secret", "modelyard-tls-router")["data"]["tls.crt"])
    san = x509.load_pem_x509_certificate(crt).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    names = set(san.value.get_values_for_type(x509.DNSName))
    assert {a.rsplit(":", 1)[0] for a in routers.values()} <= names


def test_workers_read_the_rendered_router_map(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.config import WorkerSettings

    r = render(helm, tmp_path, DIRECT)
    env = env_of(r.get("Deployment", "modelyard-worker-cpu"))
    monkeypatch.setenv("MODELYARD_WORKER_OUTCOME_ROUTERS", env["MODELYARD_WORKER_OUTCOME_ROUTERS"])
    monkeypatch.setenv("MODELYARD_WORKER_TICKET_KEYS", env["MODELYARD_WORKER_TICKET_KEYS"])
    settings = WorkerSettings()
    # Autoscaled routers: one entry per replica the HPA may run.
    assert len(settings.outcome_routers) == 10
    assert settings.outcome_routers["modelyard-router-9"].startswith("modelyard-router-9.")
    assert settings.ticket_keys == [
        "k2:/etc/modelyard/tickets/public.pem",
        "k1:/etc/modelyard/tickets/extra-k1.pem",
    ]
    hpa = r.get("HorizontalPodAutoscaler", "modelyard-router")["spec"]["scaleTargetRef"]
    assert hpa["kind"] == "StatefulSet"


def test_direct_streams_off_by_default_and_need_a_key(helm: Path, tmp_path: Path) -> None:
    result = helm_template(helm)
    assert result.returncode == 0, result.stderr
    off = Rendered("defaults", parse(result.stdout))
    assert not off.of_kind("StatefulSet")
    assert REPORTER[0] not in {s["metadata"]["name"] for s in off.of_kind("Secret")}
    for workload in off.of_kind("Deployment"):
        env = env_of(workload)
        assert not {"MODELYARD_ROUTER_TICKET_KEY", "MODELYARD_WORKER_TICKET_KEYS"} & set(env)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"directStreams": {"enabled": True}}))
    refused = helm_template(helm, "-f", str(path))
    assert refused.returncode != 0 and "ticketKeySecret" in refused.stderr
