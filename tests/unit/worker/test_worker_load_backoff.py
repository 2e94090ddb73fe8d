"""A model whose load failed is not fetched again for every request (issue #11): on-demand
loads back off exponentially and say when to retry; an operator's LoadModel tries at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import FailedPrecondition, ModelyardError
from modelyard.refs import model_key
from modelyard.v1 import common_pb2, model_pb2
from worker.config import WorkerSettings
from worker.engines.sim import SimEngine
from worker.main import build_manager
from worker.residency import backoff


def broken_model(tmp_path: Path) -> model_pb2.Model:
    artifact = tmp_path / "sim.bin"
    artifact.write_bytes(b"not the weights the registry vouched for")
    return model_pb2.Model(
        name="broken",
        version="1",
        artifact=model_pb2.Artifact(uri=artifact.as_uri(), sha256="0" * 64),
        engines=[common_pb2.ENGINE_SIM],
    )


async def test_failed_loads_back_off_for_on_demand_requests(
    settings: WorkerSettings, tmp_path: Path
) -> None:
    manager = build_manager(settings, engines={common_pb2.ENGINE_SIM: SimEngine})
    model = broken_model(tmp_path)

    async def on_demand() -> ModelyardError:
        with pytest.raises(ModelyardError) as err:
            async with manager.acquire(model, load_if_cold=True):
                pass
        return err.value

    first = await on_demand()
    assert first.reason != "LOAD_BACKOFF"  # the digest mismatch itself
    resident = manager.get(model_key("broken", "1"))
    assert resident is not None and resident.failures == 1

    second = await on_demand()
    assert isinstance(second, FailedPrecondition) and second.reason == "LOAD_BACKOFF"
    assert second.retry_after_s is not None and 0 < second.retry_after_s <= backoff.RETRY_BASE_S
    assert resident.failures == 1  # no second fetch, no second failure

    # The operator's LoadModel tries at once, and a second failure doubles the wait.
    with pytest.raises(ModelyardError):
        await manager.load(model)
    assert resident.failures == 2
    third = await on_demand()
    assert third.retry_after_s is not None and third.retry_after_s > backoff.RETRY_BASE_S

    resident.retry_at = 0.0  # the backoff ran out: the next request loads (and fails) again
    assert (await on_demand()).reason != "LOAD_BACKOFF"
    assert resident.failures == 3
