"""The code blocks of the README and docs/, and how the docs test treats each one.

Every block tagged bash, python or yaml must be listed in RUN or SKIP (by a phrase from
its first lines), so a new example is either run against a live mesh or skipped for a
written reason; a listed phrase that no block contains fails the test too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
LANGUAGES = frozenset({"bash", "sh", "python", "yaml"})

_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    opened: tuple[int, str] | None = None
    lines: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence is None:
            if opened is not None:
                lines.append(line)
            continue
        if opened is None:
            opened, lines = (number, fence.group(1)), []
        else:
            found.append(Block(path, opened[0], opened[1], "\n".join(lines) + "\n"))
            opened = None
    return [b for b in found if b.language in LANGUAGES]


# Phrase (from the block's text) -> why the block cannot run on a test machine.
SKIP = {
    "bash scripts/setup.sh && .venv/bin/modelyard up --once": (
        "the two commands themselves: the first is tests/e2e/test_up.py, the second runs this test"
    ),
    "grpcurl -plaintext": "grpcurl is not installed here (no Debian or PyPI package)",
    "--rollout-canary new --rollout-baseline old": (
        "needs two versions of a model in a running registry; "
        "tests/unit/registry/test_registry_cli.py runs the same commands"
    ),
    "registry serve --address 0.0.0.0:50051": (
        "long-running services on public addresses and /var/lib; `up` runs the same commands"
    ),
    "helm install my charts/modelyard --namespace": "needs a Kubernetes cluster",
    "helm repo add hashicorp": "needs a Kubernetes cluster and the internet",
    "openssl genpkey -algorithm ed25519": (
        "needs a Kubernetes cluster; tests/ops/test_chart_direct.py renders the chart with "
        "these values"
    ),
    "docker build": "no Docker engine here",
    "--router router:50050 --tls-ca ca.crt": (
        "a secured cluster's host names, certificates and request id; "
        "tests/integration/test_cli_secure.py runs generate with a key and a CA against a "
        "TLS mesh, and stats and feedback take the same options (modelyard/cli/connect.py)"
    ),
    "--registry registry:50051 --admin-token": (
        "a secured cluster's host names and certificates; tests/integration/test_cli_secure.py "
        "runs the same two commands against an mTLS mesh"
    ),
    'Client("router:50050", api_key="k1"': (
        "a secured cluster's host name and CA; tests/integration/test_tls_mesh.py runs Client "
        "with the same arguments against a TLS mesh"
    ),
    "export MODELYARD_WORKER_TLS_CERT_FILE": "a pod's mounted certificates",
    "bash bench/gpu_check.sh  ": (
        "the first line needs a GPU machine; tests/integration/test_gpu_check_dry_run.py "
        "runs the CPU dry run of the second"
    ),
}

# Phrases of the blocks the test runs (each test below names its own).
RUN = (
    '.venv/bin/modelyard generate --model smollm2-135m-instruct "Name three rivers',
    "from modelyard.client import AsyncClient, Client",
    "stub = router_pb2_grpc.RouterServiceStub(channel)",
    "GGUF=$(.venv/bin/python -c",
    "current-context: prod",
    'client = OpenAI(base_url="http://127.0.0.1:50080/v1"',
    "from modelyard.registry_client import AsyncRegistryClient, RegistryClient",
    "curl -sf http://127.0.0.1:50080/metrics",
    "seriesQuery: 'modelyard_worker_queued_tokens",
)


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in blocks(path)]


def find(phrase: str) -> Block:
    matches = [block for block in all_blocks() if phrase in block.text]
    assert len(matches) == 1, f"{phrase!r} is in {len(matches)} blocks"
    return matches[0]
