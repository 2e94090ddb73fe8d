"""ModelManager: coalesced loads, leases, load errors, unload."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from google.protobuf import json_format

from modelyard.digest import sha256_file
from modelyard.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, model_pb2
from tests.fixtures.tiny_gguf import gguf_model
from worker.config import WorkerSettings
from worker.counters import SequenceCounters
from worker.engines.base import Engine, EngineRequest, Finished, FinishReason, Scheduled
from worker.engines.llama_cpp import LlamaCppEngine
from worker.engines.sim import SimEngine
from worker.main import build_manager
from worker.residency import ModelManager, ResidencyState
from worker.residency.preload import read_preload


class CountingEngines:
    """Engine factory that counts how many engines (hence loads) were made."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, counters: SequenceCounters) -> Engine:
        self.made += 1
        return LlamaCppEngine(counters)


@pytest.fixture
def factory() -> CountingEngines:
    return CountingEngines()


@pytest.fixture
def manager(settings: WorkerSettings, factory: CountingEngines) -> ModelManager:
    return build_manager(settings, engines={common_pb2.ENGINE_LLAMA_CPP: factory})


async def test_concurrent_loads_of_one_model_load_it_once(
    manager: ModelManager, factory: CountingEngines, tiny_model: model_pb2.Model
) -> None:
    results = await asyncio.gather(*(manager.load(tiny_model) for _ in range(5)))

    assert factory.made == 1
    assert len({id(r.resident) for r in results}) == 1
    assert all(r.loaded for r in results)
    resident = results[0].resident
    assert resident.state is ResidencyState.WARM
    assert resident.info is not None and resident.info.engine == "llama.cpp"
    assert resident.memory_bytes > 0

    again = await manager.load(tiny_model)
    assert (again.loaded, again.load_ms, factory.made) == (False, 0.0, 1)
    await manager.close()


async def test_a_lease_holds_a_reference_while_in_use(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    await manager.load(tiny_model)
    async with manager.acquire(tiny_model) as outer:
        assert outer.resident.refcount == 1
        assert not outer.cold_start
        async with manager.acquire(tiny_model) as inner:
            assert inner.resident.refcount == 2
        assert outer.resident.refcount == 1
    assert outer.resident.refcount == 0
    assert outer.resident.last_used > 0
    await manager.close()


async def test_a_cold_model_without_load_if_cold_says_to_load_it_first(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    with pytest.raises(FailedPrecondition) as err:
        async with manager.acquire(tiny_model):
            pass
    assert "LoadModel" in err.value.message
    assert "tiny@1" in err.value.message


async def test_load_if_cold_loads_and_marks_a_cold_start(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    async with manager.acquire(tiny_model, load_if_cold=True) as lease:
        assert lease.cold_start
        assert lease.load_ms > 0
        assert lease.resident.state is ResidencyState.WARM
    await manager.close()


async def test_a_missing_file_fails_naming_the_path_and_other_models_keep_serving(
    manager: ModelManager, tiny_model: model_pb2.Model, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(FailedPrecondition) as err:
        await manager.load(gguf_model(missing, name="ghost"))
    # The file's name, never the worker's path (the message reaches clients; issue #11).
    assert missing.name in err.value.message and str(tmp_path) not in err.value.message
    ghost = manager.get(model_key("ghost", "1"))
    assert ghost is not None and ghost.state is ResidencyState.FAILED
    assert missing.name in ghost.error and str(tmp_path) not in ghost.error

    result = await manager.load(tiny_model)
    assert result.resident.state is ResidencyState.WARM
    await manager.close()


async def test_a_failed_load_is_retried_by_the_next_load(
    manager: ModelManager, tiny_gguf: Path, tmp_path: Path
) -> None:
    later = tmp_path / "later.gguf"
    model = gguf_model(later, name="later")
    with pytest.raises(FailedPrecondition):
        await manager.load(model)
    shutil.copyfile(tiny_gguf, later)
    assert (await manager.load(model)).resident.state is ResidencyState.WARM
    await manager.close()


async def test_a_checksum_mismatch_is_refused(manager: ModelManager, tiny_gguf: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        await manager.load(gguf_model(tiny_gguf, sha256="0" * 64))
    assert "sha256" in err.value.message
    assert err.value.reason == "CHECKSUM_MISMATCH"

    good = gguf_model(tiny_gguf, version="2", sha256=sha256_file(tiny_gguf))
    assert (await manager.load(good)).resident.state is ResidencyState.WARM
    await manager.close()


@pytest.mark.parametrize(
    "content", [b"not a model at all", b"GGUF" + b"\x00" * 64], ids=["bad-magic", "truncated"]
)
async def test_a_corrupt_gguf_is_refused(
    manager: ModelManager, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(content)
    with pytest.raises(FailedPrecondition) as err:
        await manager.load(gguf_model(path, name="corrupt"))
    assert err.value.reason == "ARTIFACT_CORRUPT"
    assert str(tmp_path) not in err.value.message  # never the local path


async def test_an_engine_this_worker_does_not_run_is_refused(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    with pytest.raises(FailedPrecondition) as err:
        await manager.load(tiny_model, common_pb2.ENGINE_VLLM)
    assert "ENGINE_VLLM" in err.value.message


async def test_a_preloaded_model_without_a_version_is_refused_when_read(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    # The boundary checks name and version (the servicer, the preload file); the manager
    # trusts its callers' keys.
    preload = tmp_path / "preload.json"
    preload.write_text(json_format.MessageToJson(gguf_model(tiny_gguf, version="")))
    preload.write_text(f"[{preload.read_text()}]")
    with pytest.raises(InvalidArgument, match="item 0: 'tiny@' needs both a name and a version"):
        read_preload(preload)


async def test_unload_after_the_grace_period_cancels_requests_in_flight(
    settings: WorkerSettings, tmp_path: Path
) -> None:
    # The sim engine never ends on its own here (no end-of-sequence, 100k tokens): a random
    # tiny model could say EOS just as the grace ran out and make the outcome a coin flip.
    artifact = tmp_path / "sim.bin"
    artifact.write_bytes(b"sim")
    model = model_pb2.Model(
        name="endless",
        version="1",
        artifact=model_pb2.Artifact(uri=artifact.as_uri(), sha256=sha256_file(artifact)),
        engines=[common_pb2.ENGINE_SIM],
        load_options=model_pb2.LoadOptions(
            extra={"sim_eos_probability": "0", "sim_decode_ms_per_token": "1"}
        ),
    )
    manager = build_manager(settings, engines={common_pb2.ENGINE_SIM: SimEngine})
    await manager.load(model)
    finished: list[Finished] = []
    scheduled = asyncio.Event()

    async def generate() -> None:
        async with manager.acquire(model) as lease:
            req = EngineRequest("long", prompt_token_ids=[5] * 8, max_tokens=100_000)
            async for event in lease.engine.generate(req):
                if isinstance(event, Scheduled):
                    scheduled.set()
                if isinstance(event, Finished):
                    finished.append(event)

    task = asyncio.ensure_future(generate())
    await scheduled.wait()
    result = await manager.unload(model_key("endless", "1"), grace_s=0.05)
    await task

    assert result.cancelled_requests == 1
    assert [f.reason for f in finished] == [FinishReason.CANCELLED]
    resident = manager.get(model_key("endless", "1"))
    assert resident is not None and resident.state is ResidencyState.COLD
    assert resident.engine is None and resident.refcount == 0


async def test_a_draining_model_refuses_new_requests(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    await manager.load(tiny_model)
    async with manager.acquire(tiny_model):
        unloading = asyncio.ensure_future(manager.unload(model_key("tiny", "1"), grace_s=5))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable):
            async with manager.acquire(tiny_model):
                pass
    result = await unloading  # the lease ended inside the grace period
    assert result.cancelled_requests == 0


async def test_unloading_an_unknown_model_is_not_found(manager: ModelManager) -> None:
    with pytest.raises(NotFound):
        await manager.unload(model_key("nope", "1"))


async def test_status_changes_bump_the_notifier(
    manager: ModelManager, tiny_model: model_pb2.Model
) -> None:
    before = manager.notifier.version
    await manager.load(tiny_model)
    assert manager.notifier.version > before
    await manager.close()
