"""hf:// artifacts fetched for real: a worker process downloads a GGUF through
huggingface_hub from a local stand-in of the Hub's file API (HF_ENDPOINT), verifies it
and serves it.

The stand-in speaks what `hf_hub_download` uses: `HEAD`/`GET
/<repo>/resolve/<revision>/<path>` with `X-Repo-Commit`, `ETag` and `Content-Length`,
and a 404 carrying `X-Error-Code: EntryNotFound` for a missing file (RepoNotFound for an
unknown repository), as the Hub answers.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.fixtures.catalogue import write_catalog
from tests.fixtures.tiny_gguf import gguf_model, write_tiny_gguf

pytestmark = pytest.mark.integration

REPO = "modelyard-test/tiny"
TINY_URI = f"hf://{REPO}@v1.0/weights/tiny.gguf"
MISSING_URI = f"hf://{REPO}@v1.0/weights/missing.gguf"
BIG_URI = f"hf://{REPO}@v1.0/weights/big.gguf"
MAX_ARTIFACT_BYTES = 1 << 20  # the worker's limit: the tiny GGUF fits, big.gguf does not
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """The Hub's file API on loopback: `files[(repo, revision, path)] = content`."""

    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    # (method, path) of every request, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                repo, sep, rest = path.lstrip("/").partition("/resolve/")
                revision, _, name = rest.partition("/")
                if not sep or not any(r == repo for r, _, _ in hub.files):
                    self._error("RepoNotFound", "Repository not found")
                    return
                content = hub.files.get((repo, revision, name))
                if content is None:
                    self._error("EntryNotFound", "Entry not found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(content)))
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def _error(self, code: str, message: str) -> None:
                data = f'{{"error": "{message}"}}'.encode()
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def gets(self, path: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p == path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture(scope="module")
def hub(tiny: bytes) -> Iterator[FakeHub]:
    fake = FakeHub(
        files={
            (REPO, "v1.0", "weights/tiny.gguf"): tiny,
            (REPO, "v1.0", "weights/big.gguf"): b"GGUF" + b"\0" * (2 * MAX_ARTIFACT_BYTES),
        }
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny: bytes) -> Iterator[str]:
    """A worker process whose huggingface_hub talks to the fake Hub; its address."""
    home = tmp_path_factory.mktemp("hf-worker")
    sha = hashlib.sha256(tiny).hexdigest()
    # No registry here: these versions are the worker's whole catalogue.
    catalog = write_catalog(
        home,
        _model(TINY_URI, sha),
        _model(TINY_URI, sha, version="2"),
        _model(MISSING_URI, sha, version="missing"),
        _model(TINY_URI, "0" * 64, version="bad-sum"),
        _model(BIG_URI, sha, version="big"),
    )
    address = f"127.0.0.1:{free_port()}"
    service: ServiceProcess = spawn_service(
        "worker-hf",
        ["worker", "serve", "--address", address, "--worker-id", "hf", "--threads", "1"],
        address,
        home / "worker.log",
        {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": "",
            "MODELYARD_ARTIFACTS_CACHE_DIR": str(home / "artifacts"),
            "MODELYARD_ARTIFACTS_MAX_ARTIFACT_BYTES": str(MAX_ARTIFACT_BYTES),
            "MODELYARD_WORKER_CATALOG_FILE": catalog,
        },
    )
    try:
        service.wait_healthy()
        yield address
    finally:
        service.stop()


def _model(uri: str, sha256: str, version: str = "1") -> model_pb2.Model:
    model = gguf_model(Path("/nonexistent.gguf"), name="tiny-hf", version=version, sha256=sha256)
    model.artifact.uri = uri
    return model


def _load(address: str, model: model_pb2.Model) -> worker_pb2.LoadModelResponse:
    with grpc.insecure_channel(address) as channel:
        reply: worker_pb2.LoadModelResponse = worker_pb2_grpc.WorkerServiceStub(channel).LoadModel(
            worker_pb2.LoadModelRequest(model=model), timeout=120
        )
    return reply


def test_a_worker_loads_and_serves_an_hf_artifact(worker: str, hub: FakeHub, tiny: bytes) -> None:
    sha = hashlib.sha256(tiny).hexdigest()
    model = _model(TINY_URI, sha)
    resolve = f"/{REPO}/resolve/v1.0/weights/tiny.gguf"
    before = hub.gets(resolve)  # the module's hub: a test before may have fetched it (refused)
    _load(worker, model)
    # Fetched from the Hub's resolve endpoint at the pinned revision, file by its path.
    assert hub.gets(resolve) == before + 1, hub.requests
    with grpc.insecure_channel(worker) as channel:
        events = list(
            worker_pb2_grpc.WorkerServiceStub(channel).Generate(
                worker_pb2.WorkerServiceGenerateRequest(
                    model=model,
                    prompt="hello",
                    sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0),
                ),
                timeout=60,
            )
        )
    assert events[-1].WhichOneof("event") == "finished"

    # The same artifact again (another version naming it): served from the cache.
    _load(worker, _model(TINY_URI, sha, version="2"))
    assert hub.gets(resolve) == before + 1, hub.requests


def test_a_missing_hf_file_is_not_found(worker: str, hub: FakeHub, tiny: bytes) -> None:
    sha = hashlib.sha256(tiny).hexdigest()
    uri = MISSING_URI
    with pytest.raises(grpc.RpcError) as info:
        _load(worker, _model(uri, sha, version="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert uri in (info.value.details() or "")
    assert ("HEAD", f"/{REPO}/resolve/v1.0/weights/missing.gguf") in hub.requests


def test_an_hf_file_with_another_checksum_is_refused(worker: str, hub: FakeHub) -> None:
    uri = TINY_URI
    with pytest.raises(grpc.RpcError) as info:
        _load(worker, _model(uri, "0" * 64, version="bad-sum"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert "sha256" in (info.value.details() or "")


def test_an_hf_file_over_the_limit_is_refused_before_its_download(
    worker: str, hub: FakeHub, tiny: bytes
) -> None:
    # The Hub's file metadata (a HEAD) gives the size: the worker refuses on it, and the
    # file's bytes are never asked for (issue #11: hf:// reserved only after downloading).
    sha = hashlib.sha256(tiny).hexdigest()
    with pytest.raises(grpc.RpcError) as info:
        _load(worker, _model(BIG_URI, sha, version="big"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    details = info.value.details() or ""
    assert "MAX_ARTIFACT_BYTES" in details and hub.url not in details
    resolve = f"/{REPO}/resolve/v1.0/weights/big.gguf"
    assert ("HEAD", resolve) in hub.requests and hub.gets(resolve) == 0, hub.requests
