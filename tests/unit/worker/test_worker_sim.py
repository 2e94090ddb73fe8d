"""A worker serving a simulated model over gRPC, and the switch that offers the engine.

The worker resolves models through an operator catalogue (the three sim models below);
the artifact is a local file:// URI with its sha256, fetched and verified as for every
engine. Requests name the models; the worker loads the catalogue's records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from modelyard.errors import InvalidArgument, from_rpc_error
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.sim_models import sim_model as shared_sim_model
from tests.worker_events import collect
from tests.worker_stub import serving
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue.file import FileCatalogue
from worker.config import WorkerSettings
from worker.engines import available_engines
from worker.engines.base import EngineRequest, ModelSpec, Piece, SamplingConfig
from worker.engines.sim import SimEngine

GiB = 1 << 30
EXTRA = {
    "sim_decode_ms_per_token": "1",
    "sim_eos_probability": "0",
    "sim_memory_bytes": str(3 * GiB),
}
PROMPT = "Tell me about the mesh"


def sim_model(artifact: Path, name: str, **extra: str) -> model_pb2.Model:
    return shared_sim_model(
        artifact,
        name,
        extra={**EXTRA, **extra},
        context_length=1024,
        stage=model_pb2.STAGE_UNSPECIFIED,
    )


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "sim.bin"
    path.write_bytes(b"a simulated model: any small file will do\n")
    return path


@pytest_asyncio.fixture
async def stub(tmp_path: Path, artifact: Path) -> AsyncIterator[worker_pb2_grpc.WorkerServiceStub]:
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=1,
        sim_engine=True,
        memory_budget_bytes=4 * GiB,  # one 3 GiB sim model at a time
        artifacts=ArtifactSettings(cache_dir=tmp_path / "cache"),
    )
    catalogue = FileCatalogue(
        [
            sim_model(artifact, "sim-a"),
            sim_model(artifact, "sim-b"),
            sim_model(artifact, "bad", sim_batch_slowdown="lots"),
        ]
    )
    async with serving(settings, catalogue) as client:
        yield client


def test_the_engine_is_offered_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert common_pb2.ENGINE_SIM not in available_engines()
    assert list(available_engines(sim=True))[-1] == common_pb2.ENGINE_SIM  # last: never a default
    assert WorkerSettings().sim_engine is False
    monkeypatch.setenv("MODELYARD_WORKER_SIM_ENGINE", "true")
    assert WorkerSettings().sim_engine is True


async def reference_text(extra: dict[str, str], max_tokens: int) -> str:
    engine = SimEngine()
    await engine.load(ModelSpec("ref@1", Path("/dev/null"), 1024, 1, extra=extra))
    req = EngineRequest("ref", prompt=PROMPT, sampling=SamplingConfig(0.0), max_tokens=max_tokens)
    text = "".join([e.text async for e in engine.generate(req) if isinstance(e, Piece)])
    await engine.unload()
    return text


async def test_a_worker_serves_a_sim_model_over_grpc(
    stub: worker_pb2_grpc.WorkerServiceStub, artifact: Path
) -> None:
    model = sim_model(artifact, "sim-a")
    loaded = await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=30)
    assert loaded.model.engine == common_pb2.ENGINE_SIM
    assert loaded.model.memory_bytes == 3 * GiB  # sim_memory_bytes, not the file's size

    request = worker_pb2.WorkerServiceGenerateRequest(model=model, prompt=PROMPT)
    request.sampling.temperature, request.sampling.max_tokens = 0.0, 12
    events = await collect(stub.Generate(request, timeout=30))
    assert events[0].started.engine == common_pb2.ENGINE_SIM
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    finished = events[-1].finished
    assert finished.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert finished.usage.output_tokens == 12 and finished.usage.input_tokens == 6
    assert text == await reference_text(EXTRA, 12)  # the engine's own words, over the wire

    status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
    assert common_pb2.ENGINE_SIM in status.engines
    assert [m.generated_tokens_total for m in status.models] == [13]  # 1 of them the warm-up

    # Memory per model is real to residency: a second 3 GiB model evicts the idle first.
    await stub.LoadModel(worker_pb2.LoadModelRequest(model=sim_model(artifact, "sim-b")))
    status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
    warm = [m.name for m in status.models if m.state == worker_pb2.RESIDENCY_STATE_WARM]
    assert warm == ["sim-b"] and status.memory_used_bytes == 3 * GiB


async def test_a_bad_sim_option_fails_the_load_clearly(
    stub: worker_pb2_grpc.WorkerServiceStub, artifact: Path
) -> None:
    model = sim_model(artifact, "bad", sim_batch_slowdown="lots")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadModel(worker_pb2.LoadModelRequest(model=model), timeout=30)
    error = from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgument)
    assert "load_options.extra.sim_batch_slowdown" in error.message
