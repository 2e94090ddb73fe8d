"""A load holds its artifact in the cache, reports its progress, and passes its options.

The artifact is served over a real local HTTP server into a real cache; the engine
is llama.cpp on the tiny GGUF, or a recording stand-in where only the spec matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from modelyard.errors import FailedPrecondition, ResourceExhausted
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, model_pb2
from tests.fixtures.tiny_gguf import gguf_model
from worker.artifacts import ArtifactSettings, ArtifactStore
from worker.config import WorkerSettings
from worker.counters import ChangeNotifier, CounterSnapshot, SequenceCounters
from worker.engines.base import (
    EmbedRequest,
    EmbedResult,
    Engine,
    EngineEvent,
    EngineRequest,
    Finished,
    FinishReason,
    LoadedInfo,
    ModelSpec,
)
from worker.main import build_manager
from worker.residency import ModelManager, ResidencyState
from worker.residency.load_options import engine_extra
from worker.residency.progress import LoadPhase
from worker.status import model_status


@pytest.fixture
def served(tiny_gguf: Path) -> Iterator[str]:
    """Serves the tiny GGUF under any path, slowly enough that progress is reported."""
    body = tiny_gguf.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 1 << 14):
                time.sleep(0.03)  # ~0.3 s in all: longer than the progress throttle
                self.wfile.write(body[i : i + (1 << 14)])

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def tiny_sha(tiny_gguf: Path) -> str:
    return hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_abs(tiny_gguf: Path) -> Path:
    return tiny_gguf.resolve()


@pytest.fixture
def store(tmp_path: Path, tiny_gguf: Path) -> ArtifactStore:
    """The store the manager is given: room for one tiny GGUF and a half."""
    size = tiny_gguf.stat().st_size
    return ArtifactStore(
        ArtifactSettings(cache_dir=tmp_path / "cache", max_cache_bytes=size * 3 // 2)
    )


def remote(base: str, name: str, tiny_gguf: Path) -> model_pb2.Model:
    model = gguf_model(tiny_gguf, name=name)
    model.artifact.uri = f"{base}/{name}.gguf"
    model.artifact.sha256 = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    return model


class PhaseRecorder(ChangeNotifier):
    """Records the load phase of one model at every status change."""

    def __init__(self) -> None:
        super().__init__()
        self.manager: ModelManager | None = None
        self.seen: list[tuple[str, int, int]] = []

    def notify(self) -> None:
        super().notify()
        if self.manager is not None and (r := self.manager.get(model_key("a", "1"))) is not None:
            m = model_status(r)
            self.seen.append((m.load_phase, m.download_bytes_done, m.download_bytes_total))


async def test_a_loaded_model_keeps_its_artifact_in_the_cache_until_unloaded(
    settings: WorkerSettings, served: str, store: ArtifactStore, tiny_gguf: Path, tiny_abs: Path
) -> None:
    notifier = PhaseRecorder()
    manager = build_manager(settings, store=store, notifier=notifier)
    notifier.manager = manager
    await manager.load(remote(served, "a", tiny_gguf))

    size = tiny_abs.stat().st_size  # noqa: ASYNC240 (a stat of a tiny local file)
    phases = [phase for phase, _, _ in notifier.seen]
    assert phases[:2] == ["", LoadPhase.FETCH.value]  # LOADING, then the fetch began
    assert (LoadPhase.DOWNLOAD.value, size, size) in notifier.seen
    assert phases.index(LoadPhase.LOAD.value) < phases.index(LoadPhase.WARM_UP.value)
    assert notifier.seen[-1] == ("", 0, 0)  # warm: no progress any more

    # The cache has room for one: the loaded model's file is in use, so it is not evicted.
    other = remote(served, "b", tiny_gguf).artifact
    with pytest.raises(ResourceExhausted) as err:
        await store.fetch(other)
    assert err.value.reason == "ARTIFACT_CACHE_FULL"

    await manager.unload(model_key("a", "1"))
    assert (await store.fetch(other)).is_file()  # released: evicted to make room
    assert [e.uri for e in store.entries()] == [other.uri]
    await manager.close()


async def test_a_failed_load_releases_its_artifact(
    settings: WorkerSettings, served: str, store: ArtifactStore, tiny_gguf: Path
) -> None:
    manager = build_manager(
        settings.model_copy(update={"memory_budget_bytes": 1 << 20}), store=store
    )
    with pytest.raises(ResourceExhausted):  # fetched, then too large for the budget
        await manager.load(remote(served, "a", tiny_gguf))
    assert (await store.fetch(remote(served, "b", tiny_gguf).artifact)).is_file()


class RecordingEngine:
    """Records the spec it was loaded with; every generation finishes at once."""

    name = "recording"
    specs: ClassVar[list[ModelSpec]] = []

    def __init__(self, counters: SequenceCounters) -> None:
        del counters

    async def load(self, spec: ModelSpec) -> LoadedInfo:
        RecordingEngine.specs.append(spec)
        return LoadedInfo("recording", spec.context_length, 10, False)

    async def generate(self, req: EngineRequest) -> AsyncGenerator[EngineEvent, None]:
        yield Finished(FinishReason.STOP, 1, 0)

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        return EmbedResult([[1.0] for _ in req.inputs], len(req.inputs))

    def abort(self, request_id: str) -> None:
        pass

    async def unload(self) -> None:
        pass

    def stats(self) -> CounterSnapshot:
        return CounterSnapshot()


def recording(counters: SequenceCounters) -> Engine:
    return RecordingEngine(counters)


@pytest.fixture
def vllm_manager(settings: WorkerSettings) -> ModelManager:
    RecordingEngine.specs = []
    return build_manager(settings, engines={common_pb2.ENGINE_VLLM: recording})


def vllm_model(path: Path, name: str, sha: str = "") -> model_pb2.Model:
    model = gguf_model(path, name=name, sha256=sha)
    model.engines[:] = [common_pb2.ENGINE_VLLM]
    model.resources.memory_bytes = 1 << 20
    return model


async def test_load_options_reach_the_engine_with_the_draft_model_resolved(
    vllm_manager: ModelManager, tiny_gguf: Path, tiny_sha: str, tiny_abs: Path
) -> None:
    sha = tiny_sha
    await vllm_manager.load(vllm_model(tiny_gguf, "draft", sha))
    target = vllm_model(tiny_gguf, "target", sha)
    target.load_options.quantization = "fp8"
    target.load_options.draft_model = "draft@1"
    target.load_options.extra["num_speculative_tokens"] = "3"
    await vllm_manager.load(target)

    extra = RecordingEngine.specs[-1].extra
    assert extra == {
        "quantization": "fp8",
        "sha256": sha,
        "draft_model": str(tiny_abs),
        "draft_sha256": sha,
        "num_speculative_tokens": "3",
    }
    await vllm_manager.close()


async def test_an_unknown_draft_model_is_refused_saying_how_to_fix_it(
    vllm_manager: ModelManager, tiny_gguf: Path
) -> None:
    target = vllm_model(tiny_gguf, "target")
    target.load_options.draft_model = "nowhere@1"
    with pytest.raises(FailedPrecondition) as err:
        await vllm_manager.load(target)
    assert err.value.reason == "DRAFT_MODEL_UNRESOLVED"
    assert "registered" in err.value.message and "artifact URI" in err.value.message
    r = vllm_manager.get(model_key("target", "1"))
    assert r is not None and r.state is ResidencyState.FAILED
    assert RecordingEngine.specs == []


async def test_a_draft_model_may_be_an_artifact_uri(
    vllm_manager: ModelManager, tiny_gguf: Path, tiny_abs: Path
) -> None:
    target = vllm_model(tiny_gguf, "target")
    target.load_options.draft_model = tiny_abs.as_uri()
    await vllm_manager.load(target)
    assert RecordingEngine.specs[-1].extra["draft_model"] == str(tiny_abs)
    await vllm_manager.close()


def test_engine_extra_gives_llama_cpp_its_gpu_layers_and_typed_options_win() -> None:
    model = model_pb2.Model(name="m", version="1")
    model.load_options.gpu_layers = -1
    model.load_options.quantization = "q8"
    model.load_options.extra.update({"quantization": "other", "flash_attn": "1"})
    assert engine_extra(model, common_pb2.ENGINE_LLAMA_CPP).extra == {
        "quantization": "q8",
        "flash_attn": "1",
        "n_gpu_layers": "-1",
    }
    assert "n_gpu_layers" not in engine_extra(model, common_pb2.ENGINE_VLLM).extra


async def test_progress_updates_are_throttled_but_the_last_one_arrives() -> None:
    from worker.residency.progress import LoadProgress, ProgressPublisher

    notifier = ChangeNotifier()
    progress = LoadProgress()
    publisher = ProgressPublisher(progress, notifier, rate_hz=10)
    start = notifier.version
    for done in range(1, 101):
        publisher.bytes(done, 100)
    assert notifier.version - start == 1  # the first at once, the rest held back
    await asyncio.sleep(0.15)
    assert notifier.version - start == 2  # one trailing update with the last count
    assert (progress.phase, progress.bytes_done, progress.bytes_total) == (
        LoadPhase.DOWNLOAD,
        100,
        100,
    )
    publisher.phase(LoadPhase.LOAD)
    assert notifier.version - start == 3  # phase changes go out at once


def test_the_cli_describes_each_load_phase() -> None:
    from modelyard.cli.load import describe
    from modelyard.v1 import worker_pb2

    MiB = 1 << 20
    downloading = worker_pb2.ModelStatus(
        load_phase="download", download_bytes_done=5 * MiB, download_bytes_total=20 * MiB
    )
    assert describe(downloading) == ("downloading", "5.0/20.0 MiB", 5 * MiB, 20 * MiB)
    unknown_size = worker_pb2.ModelStatus(load_phase="download", download_bytes_done=MiB)
    assert describe(unknown_size) == ("downloading", "1.0 MiB", MiB, None)
    assert describe(worker_pb2.ModelStatus(load_phase="warm_up")) == ("warming up", "", 0, None)
