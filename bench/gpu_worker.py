"""The transformers engine through a real in-process worker, for `bench.gpu_check`.

One worker serves the tiny checkpoint of `bench.gpu_tiny` (engine transformers, device from
the check) over gRPC on loopback; each check returns a `Check`. A second worker with a
budget smaller than the model shows the load refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.gpu_report import Check, failed, guarded, passed
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from worker.artifacts.files import sha256_tree, tree_size
from worker.artifacts.settings import ArtifactSettings
from worker.catalogue import FileCatalogue
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

CONTEXT = 2048
PROMPT = "Count from one to ten:"
Stub = worker_pb2_grpc.WorkerServiceStub


@dataclass
class Plan:
    checkpoint: Path
    parameters: int
    device: str  # "cuda" or "cpu"
    cache: Path
    tokens: int = 64
    streams: int = 8
    threads: int = 1


def tiny_model(plan: Plan) -> model_pb2.Model:
    return model_pb2.Model(
        name="tiny-llama",
        version="1",
        artifact=model_pb2.Artifact(
            uri=plan.checkpoint.resolve().as_uri(),
            sha256=sha256_tree(plan.checkpoint),
            format=model_pb2.ARTIFACT_FORMAT_HF,
        ),
        engines=[common_pb2.ENGINE_TRANSFORMERS],
        capabilities=model_pb2.Capabilities(chat=True, completion=True, context_length=CONTEXT),
        load_options=model_pb2.LoadOptions(extra={"device": plan.device}),
    )


async def open_worker(plan: Plan, model: model_pb2.Model, budget: int = 0) -> RunningWorker:
    settings = WorkerSettings(
        address="127.0.0.1:0",
        threads=plan.threads,
        context_length=CONTEXT,
        memory_budget_bytes=budget,
        artifacts=ArtifactSettings(cache_dir=plan.cache / f"cache-{budget}"),
    )
    return await start_worker(settings, catalogue=FileCatalogue([model]))


def _ref(model: model_pb2.Model) -> model_pb2.Model:
    return model_pb2.Model(name=model.name, version=model.version)


def cuda_allocated(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated())


async def check_load(stub: Stub, model: model_pb2.Model, plan: Plan) -> tuple[Check, int]:
    """LoadModel to warm; returns the check and the CUDA bytes the load allocated."""
    before = cuda_allocated(plan.device)
    started = time.perf_counter()
    reply = await stub.LoadModel(
        worker_pb2.LoadModelRequest(model=_ref(model), engine=common_pb2.ENGINE_TRANSFORMERS),
        timeout=300,
    )
    wall = time.perf_counter() - started
    grown = cuda_allocated(plan.device) - before
    state = worker_pb2.ResidencyState.Name(reply.model.state)
    detail = (
        f"{state} in {wall:.2f} s (worker load_ms {reply.load_ms:.0f}); "
        f"{plan.parameters / 1e6:.1f}M parameters on {plan.device}"
    )
    if reply.model.state != worker_pb2.RESIDENCY_STATE_WARM:
        return failed("load", detail), grown
    return passed("load", detail), grown


def request(model: model_pb2.Model, tokens: int, prompt: str = PROMPT) -> Any:
    return worker_pb2.WorkerServiceGenerateRequest(
        model=_ref(model),
        prompt=prompt,
        sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0),
    )


@dataclass
class Streamed:
    ids: int = 0
    deltas: int = 0
    ttft: float = 0.0
    seconds: float = 0.0
    finished: Any = None  # common_pb2.GenerationFinished


async def stream(stub: Stub, req: Any, on_delta: Callable[[int], bool] | None = None) -> Streamed:
    """One Generate to its end, or until `on_delta(ids so far)` says stop (then cancelled)."""
    out, started = Streamed(), time.perf_counter()
    call = stub.Generate(req, timeout=300)
    async for event in call:
        if event.HasField("delta") and event.delta.token_ids:
            out.ttft = out.ttft or time.perf_counter() - started
            out.ids += len(event.delta.token_ids)
            out.deltas += 1
            if on_delta is not None and on_delta(out.ids):
                call.cancel()
                break
        elif event.HasField("finished"):
            out.finished = event.finished
    out.seconds = time.perf_counter() - started
    return out


async def check_stream(stub: Stub, model: model_pb2.Model, plan: Plan) -> Check:
    got = await stream(stub, request(model, plan.tokens))
    fin = got.finished
    if fin is None:
        return failed("stream", f"no GenerationFinished after {got.ids} tokens")
    reason = common_pb2.FinishReason.Name(fin.finish_reason)
    rate = (got.ids - 1) / (got.seconds - got.ttft) if got.ids > 1 else 0.0
    detail = (
        f"{got.ids} token ids in {got.deltas} deltas, usage output {fin.usage.output_tokens} / "
        f"input {fin.usage.input_tokens}, {reason}; TTFT {got.ttft * 1000:.0f} ms, "
        f"decode {rate:.1f} tok/s"
    )
    ok = got.ids == fin.usage.output_tokens == plan.tokens and fin.usage.input_tokens > 0
    return passed("stream", detail) if ok else failed("stream", detail)


async def model_status(stub: Stub, model: model_pb2.Model) -> Any:
    status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
    for m in status.models:
        if m.name == model.name and m.version == model.version:
            return m
    raise LookupError(f"{model.name} not in the worker's status")


async def check_cancel(stub: Stub, model: model_pb2.Model) -> Check:
    """Cancel after 5 tokens of a 1,500-token stream: the engine stops, sequences drain to 0."""
    before = (await model_status(stub, model)).generated_tokens_total
    got = await stream(stub, request(model, 1500), on_delta=lambda ids: ids >= 5)
    deadline = time.monotonic() + 10
    while True:
        m = await model_status(stub, model)
        if (m.running_sequences == 0 and m.in_flight == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    settled = (await model_status(stub, model)).generated_tokens_total
    await asyncio.sleep(0.5)
    later = await model_status(stub, model)
    made = settled - before
    detail = (
        f"cancelled after {got.ids} tokens; engine produced {made} in all, then "
        f"{later.generated_tokens_total - settled} more; running {later.running_sequences}, "
        f"in flight {later.in_flight}"
    )
    ok = (
        later.running_sequences == 0
        and later.in_flight == 0
        and later.generated_tokens_total == settled
        and made < 1500
    )
    return passed("cancel mid-stream", detail) if ok else failed("cancel mid-stream", detail)


async def aggregate(stub: Stub, model: model_pb2.Model, n: int, tokens: int) -> tuple[float, int]:
    """(aggregate tok/s of `n` concurrent greedy streams, streams that came back short)."""
    started = time.perf_counter()
    reqs = [request(model, tokens, f"{PROMPT} {i}") for i in range(n)]
    results = await asyncio.gather(*(stream(stub, r) for r in reqs))
    rate = sum(r.ids for r in results) / (time.perf_counter() - started)
    return rate, sum(1 for r in results if r.ids != tokens)


async def check_batching(stub: Stub, model: model_pb2.Model, plan: Plan) -> Check:
    one, short1 = await aggregate(stub, model, 1, plan.tokens)
    many, short_n = await aggregate(stub, model, plan.streams, plan.tokens)
    detail = (
        f"1 stream {one:.1f} tok/s, {plan.streams} streams {many:.1f} tok/s: "
        f"ratio {many / one:.2f}x (the transformers engine decodes one request at a time, "
        f"FIFO: ~1x is its design, vLLM is the batching engine); short streams {short1 + short_n}"
    )
    # Pass: every stream complete and no collapse under concurrency (shared CPUs are noisy).
    ok = short1 + short_n == 0 and many >= 0.5 * one
    return passed("batching ratio", detail) if ok else failed("batching ratio", detail)


async def check_memory(stub: Stub, model: model_pb2.Model, plan: Plan, grown: int) -> Check:
    """The worker's figure for the model vs what the device holds for it."""
    reported = (await model_status(stub, model)).memory_bytes
    status = (await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10)).status
    if plan.device == "cuda":
        held, what = grown, "torch.cuda.memory_allocated growth over the load"
    else:
        held, what = plan.parameters * 4, "float32 parameter bytes (no CUDA allocator on CPU)"
    # The worker's figure is host RSS growth floored by its file-size estimate: it does
    # not read CUDA memory, so on a GPU this says whether the estimate covers the weights.
    detail = (
        f"worker reports {reported / 2**20:.1f} MiB (RSS growth or estimate); {what}: "
        f"{held / 2**20:.1f} MiB (ratio {reported / max(held, 1):.2f}); worker device "
        f"{status.device!r} ({status.device_name}), budget {status.memory_budget_bytes >> 20} MiB"
    )
    ok = reported >= held > 0
    return passed("memory: reported vs held", detail) if ok else failed("memory", detail)


async def check_refused(plan: Plan, model: model_pb2.Model) -> Check:
    """A worker whose budget is half the checkpoint's size refuses the load."""
    budget = max(tree_size(plan.checkpoint) // 2, 1)
    worker = await open_worker(plan, model, budget=budget)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            try:
                await Stub(channel).LoadModel(
                    worker_pb2.LoadModelRequest(
                        model=_ref(model), engine=common_pb2.ENGINE_TRANSFORMERS
                    ),
                    timeout=120,
                )
            except grpc.aio.AioRpcError as err:
                detail = f"budget {budget / 2**20:.1f} MiB: {err.code().name}: {err.details()}"
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return passed("memory: budget too small refused", detail)
                return failed("memory: budget too small refused", detail)
            return failed("memory: budget too small refused", f"budget {budget}: loaded anyway")
    finally:
        await worker.stop(grace_s=1)


async def run_worker_checks(plan: Plan) -> list[Check]:
    model = tiny_model(plan)
    worker = await open_worker(plan, model)
    checks: list[Check] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            stub = Stub(channel)
            load, grown = await check_load(stub, model, plan)
            checks.append(load)
            if load.status != "PASS":
                return checks
            checks.append(await guarded("stream", check_stream(stub, model, plan)))
            checks.append(await guarded("cancel mid-stream", check_cancel(stub, model)))
            checks.append(await guarded("batching ratio", check_batching(stub, model, plan)))
            checks.append(await guarded("memory", check_memory(stub, model, plan, grown)))
    finally:
        await worker.stop(grace_s=1)
    checks.append(await guarded("memory: budget refused", check_refused(plan, model)))
    return checks
