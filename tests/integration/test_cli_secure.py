"""The CLI against a mesh with every guard on (mTLS with one identity per service, a token
per role, named client keys), run as a user runs it: a process per command.

The admin registers SmolLM2 with --admin-token and the admin's certificate, a reader lists
it with --registry-token, the operator loads it with --operator-token and the operator's
certificate, a client generates with --api-key and the CA. Each of those calls is also made
without its credential (or with the wrong certificate), and fails with the service's
message and a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelyard.bundled import smollm2_model
from modelyard.local_mesh import LocalMesh
from tests.tls_certs import CertFiles, TestCA

pytestmark = pytest.mark.integration

ID = "spiffe://modelyard/{}".format
ADMIN_TOKEN = "registry-admin-token"
CLI_READS = "cli-reader-token"
OPERATOR_TOKEN = "worker-operator-token"
CLIENT_KEY = "client-key-app"


@dataclass
class Secure:
    mesh: LocalMesh
    ca: TestCA
    certs: dict[str, CertFiles]

    def as_(self, who: str) -> list[str]:
        """The TLS flags of `who`: the CA and, for mTLS, its own certificate."""
        files = self.certs[who]
        ca, cert, key = str(self.ca.ca_file), str(files.cert), str(files.key)
        return ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    tmp = tmp_path_factory.mktemp("cli-secure")
    ca = TestCA(tmp / "tls")
    roles = ("registry", "router", "worker", "admin", "operator", "reader")
    certs = {role: ca.issue(role, ID(role)) for role in roles}
    env: dict[str, str] = {
        "MODELYARD_REGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
        "MODELYARD_REGISTRY_READER_TOKENS": "router:r-reads,worker:w-reads,cli:" + CLI_READS,
        "MODELYARD_REGISTRY_ADMIN_IDENTITIES": ID("admin"),
        "MODELYARD_REGISTRY_READER_IDENTITIES": f"{ID('router')},{ID('worker')},{ID('reader')}",
        "MODELYARD_WORKER_ADMIN_TOKEN": OPERATOR_TOKEN,
        "MODELYARD_WORKER_API_KEY": "router-to-worker",
        "MODELYARD_WORKER_OPERATOR_IDENTITIES": ID("operator"),
        "MODELYARD_WORKER_ROUTER_IDENTITIES": ID("router"),
        "MODELYARD_WORKER_REGISTRY_TOKEN": "w-reads",
        "MODELYARD_ROUTER_API_KEYS": f"app:{CLIENT_KEY}",
        "MODELYARD_ROUTER_REGISTRY_TOKEN": "r-reads",
        "MODELYARD_ROUTER_WORKER_API_KEY": "router-to-worker",
    }
    for service in ("registry", "worker"):
        env |= ca.env(service, certs[service], mtls=True)
    env |= ca.env("router", certs["router"], mtls=False)  # clients prove themselves by key
    local = LocalMesh(data_dir=tmp / "mesh", worker_threads=2, env=env)
    local.start()
    try:
        yield Secure(local, ca, certs)
    finally:
        local.stop()


def modelyard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, "COLUMNS": "400", "NO_COLOR": "1", **(env or {})},
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str], code: str, *words: str) -> None:
    """Exit code 1 and `CODE: <the service's message>` on stderr."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    text = " ".join(done.stderr.split())  # rich wraps long messages
    assert f"{code}:" in text, text
    for w in words:
        assert w in text, (w, text)


def test_the_cli_registers_lists_loads_and_generates_with_each_roles_credentials(
    secure: Secure,
) -> None:
    model = smollm2_model()
    ref = f"{model.name}@{model.version}"
    registry = ["--registry", secure.mesh.registry_address]
    register = [
        "models",
        "register",
        *registry,
        "--name",
        model.name,
        "--version",
        model.version,
        "--uri",
        model.artifact.uri,
        "--sha256",
        model.artifact.sha256,
        "--format",
        "gguf",
        "--engine",
        "llama_cpp",
        "--chat",
        "--completion",
        "--context-length",
        "2048",
        "--stage",
        "production",
    ]

    # The registry admin: the token and the admin's certificate, each needed.
    refused(modelyard(*register, *secure.as_("admin")), "UNAUTHENTICATED", "admin token")
    refused(
        modelyard(*register, *secure.as_("reader"), "--admin-token", ADMIN_TOKEN),
        "PERMISSION_DENIED",
        f"certificate names {ID('reader')}",
    )
    done = modelyard(*register, *secure.as_("admin"), "--admin-token", ADMIN_TOKEN)
    assert done.returncode == 0, done.stderr
    assert f"registered {ref}" in done.stdout

    # A reader: the reader token, here from the environment as a script would set it.
    listing = ["models", "list", *registry, "--json", *secure.as_("reader")]
    refused(modelyard(*listing), "UNAUTHENTICATED", "reader token", "--registry-token")
    done = modelyard(*listing, env={"MODELYARD_REGISTRY_TOKEN": CLI_READS})
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["name"] for line in done.stdout.splitlines()] == [model.name]

    # The worker operator: LoadModel needs the operator token (and certificate).
    load = ["models", "load", ref, "--worker", secure.mesh.worker_addresses[0]]
    refused(
        modelyard(*load, *secure.as_("operator")),
        "UNAUTHENTICATED",
        "worker operator",
        "--operator-token",
    )
    done = modelyard(*load, *secure.as_("operator"), "--operator-token", OPERATOR_TOKEN)
    assert done.returncode == 0, done.stderr
    assert f"loaded {ref}" in done.stdout

    # A client: the router's TLS port with the CA only (no client certificate), and a key.
    generate = [
        "generate",
        "Hi",
        "--model",
        ref,
        "--router",
        secure.mesh.router_address,
        "--max-tokens",
        "4",
    ]
    ca_only = {"MODELYARD_TLS_CA_FILE": str(secure.ca.ca_file)}
    refused(modelyard(*generate, env=ca_only), "UNAUTHENTICATED", "--api-key")
    done = modelyard(*generate, "--api-key", CLIENT_KEY, env=ca_only)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and f"{ref} on " in done.stderr
