"""The worker's state as the contract's WorkerStatus and ModelStatus (numbers: counters.py)."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

import modelyard
from modelyard.v1 import common_pb2, worker_pb2
from worker.counters import CounterSnapshot
from worker.engines.prefix_summary import PrefixCacheHolder
from worker.residency import ModelManager, ResidencyState, Resident
from worker.residency.memory import GPU_ENGINES, cuda_memory, gpu_name

RESIDENCY = {
    ResidencyState.COLD: worker_pb2.RESIDENCY_STATE_COLD,
    ResidencyState.LOADING: worker_pb2.RESIDENCY_STATE_LOADING,
    ResidencyState.WARM: worker_pb2.RESIDENCY_STATE_WARM,
    ResidencyState.DRAINING: worker_pb2.RESIDENCY_STATE_DRAINING,
    ResidencyState.FAILED: worker_pb2.RESIDENCY_STATE_FAILED,
}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_device(engines: Collection[common_pb2.Engine.ValueType]) -> tuple[str, str]:
    """(device, its name) the models run on: "cuda" when a CUDA engine (vLLM, or
    transformers, which takes a CUDA device when torch sees one) has a CUDA device,
    "metal" on Apple silicon (llama.cpp's Metal build), else "cpu"."""
    if not GPU_ENGINES.isdisjoint(engines) and cuda_memory() is not None:
        return "cuda", gpu_name() or "CUDA device"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal", cpu_name()
    return "cpu", cpu_name()


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    address: str
    device: str = "cpu"  # what detect_device says; worker.main fills it in
    device_name: str = field(default_factory=cpu_name)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def model_status(r: Resident) -> worker_pb2.ModelStatus:
    snap = r.counters.snapshot()
    status = worker_pb2.ModelStatus(
        name=r.model.name,
        version=r.model.version,
        state=RESIDENCY[r.state],
        engine=r.engine_kind,
        memory_bytes=r.memory_bytes,
        pinned=r.pinned,
        in_flight=r.refcount,
        queued_requests=snap.queued_requests,
        queued_tokens=snap.queued_tokens,
        running_sequences=snap.running_sequences,
        tokens_per_second=snap.tokens_per_second,
        error=r.error,
        generated_tokens_total=snap.generated_tokens_total,
    )
    if r.state is ResidencyState.LOADING:
        status.load_phase = r.progress.phase.value
        status.download_bytes_done = r.progress.bytes_done
        status.download_bytes_total = r.progress.bytes_total
    if r.last_used:
        status.last_used.CopyFrom(_timestamp(r.last_used))
    _prefix_cache(r, snap, status.prefix_cache)
    return status


def _prefix_cache(r: Resident, snap: CounterSnapshot, out: worker_pb2.PrefixCacheSummary) -> None:
    """The engine's prefix cache (scheme empty when it publishes none) and the hit totals.

    Built at every status read, so it changes no more often than the status does: the
    cache only changes when a sequence finishes, which is a status change already."""
    out.prompt_tokens_total = snap.prompt_tokens_total
    out.cached_prompt_tokens_total = snap.cached_prompt_tokens_total
    engine = r.engine
    if r.state is not ResidencyState.WARM or not isinstance(engine, PrefixCacheHolder):
        return
    summary = engine.prefix_summary()
    if summary is None:
        return
    out.scheme = summary.scheme
    out.link_hashes.extend(summary.link_hashes)
    out.cached_tokens = summary.cached_tokens
    out.cached_tokens_limit = summary.cached_tokens_limit


def build_worker_status(identity: WorkerIdentity, manager: ModelManager) -> worker_pb2.WorkerStatus:
    models = [model_status(r) for r in manager.residents()]
    return worker_pb2.WorkerStatus(
        worker_id=identity.worker_id,
        address=identity.address,
        engines=list(manager.engines),
        device=identity.device,
        device_name=identity.device_name,
        memory_budget_bytes=manager.budget_bytes,
        memory_used_bytes=manager.used_bytes,
        models=models,
        running_sequences=sum(m.running_sequences for m in models),
        queued_requests=sum(m.queued_requests for m in models),
        queued_tokens=sum(m.queued_tokens for m in models),
        tokens_per_second=sum(m.tokens_per_second for m in models),
        sequence=manager.notifier.version,
        updated_at=_timestamp(time.time()),
        version=modelyard.__version__,
    )
