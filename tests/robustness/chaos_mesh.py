"""A mesh of real processes to break on purpose, and a steady stream of requests through it.

Registry (SQLite), three workers on the sim engine and a router, discovering each other
through the Consul stand-in (no static workers). The router reaches every worker through
a `CutProxy`, a TCP relay that can drop every open connection at once, so "a connection
cut mid-stream" is a real socket closing under a live HTTP/2 stream. `SteadyLoad` keeps a
few clients generating through the router and records how each request ended, per phase.

Used by tests/robustness/test_chaos.py (CI asserts) and bench/chaos_bench.py (the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.consul_agent import ConsulAgentStandIn
from tests.sim_models import sim_model as shared_sim_model

T = TypeVar("T")
MODEL = "chaos-sim"
DEADLINE_S = 8.0  # every client request's deadline
SIM_EXTRA = {
    "sim_decode_ms_per_token": "10",
    "sim_prefill_ms_per_token": "0.1",
    "sim_eos_probability": "0",
}


def sim_model(artifact: Path, name: str = MODEL, version: str = "1") -> model_pb2.Model:
    return shared_sim_model(
        artifact, name, version=version, extra=SIM_EXTRA, context_length=2048, declare_size=True
    )


class CutProxy:
    """A loopback TCP relay to `target_port` whose open connections can all be cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._transports: set[asyncio.WriteTransport] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> CutProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._relay, "127.0.0.1", self.port))
        return self

    def cut(self) -> int:
        """Abort every open connection (both sides see a reset); return how many."""

        async def abort() -> int:
            live = list(self._transports)
            for transport in live:
                transport.abort()
            self._transports.clear()
            return len(live)

        return self._run(abort())

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer.transport, up_writer.transport}
        self._transports |= pair
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._transports -= pair


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@dataclass
class ChaosMesh:
    """The processes, the Consul stand-in and the proxy; start() returns once all serve."""

    data_dir: Path
    workers: int = 3
    agent: ConsulAgentStandIn = field(init=False)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    proxies: list[CutProxy] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry_address = f"127.0.0.1:{free_port()}"
        self.router_address = f"127.0.0.1:{free_port()}"
        self.worker_ports = [free_port() for _ in range(self.workers)]
        self.agent = ConsulAgentStandIn()
        self.artifact = self.data_dir / "sim.bin"
        self.artifact.write_bytes(b"a simulated model for the chaos suite\n")

    def env(self) -> dict[str, str]:
        return {
            "MODELYARD_CONSUL_ADDRESS": self.agent.address,
            "MODELYARD_CONSUL_CHECK_INTERVAL_S": "0.2",
            "MODELYARD_CONSUL_WAIT_S": "5",
            "MODELYARD_WORKER_SIM_ENGINE": "true",
        }

    def start(self) -> ChaosMesh:
        self.agent.start()
        self.proxies = [CutProxy(port).start() for port in self.worker_ports]
        self.start_registry()
        for i in range(self.workers):
            self.start_worker(i)
        for service in self.services.values():
            service.wait_healthy(60)
        self.register(sim_model(self.artifact))
        args = ["router", "serve", "--address", self.router_address]
        args += ["--registry-address", self.registry_address]
        self._spawn("router", args, self.router_address).wait_healthy(60)
        return self

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            self.services.pop(name).stop()
        for proxy in self.proxies:
            proxy.stop()
        self.agent.stop()

    def start_registry(self) -> ServiceProcess:
        url = f"sqlite+aiosqlite:///{self.data_dir / 'registry.db'}"
        args = ["registry", "serve", "--address", self.registry_address, "--database-url", url]
        return self._spawn("registry", args, self.registry_address)

    def start_worker(self, i: int) -> ServiceProcess:
        address = f"127.0.0.1:{self.worker_ports[i]}"
        args = ["worker", "serve", "--address", address, "--worker-id", f"worker-{i}"]
        args += ["--registry-address", self.registry_address, "--threads", "1"]
        # Advertised in Consul, so the router dials the worker through its proxy.
        env = {"MODELYARD_WORKER_ADVERTISE_ADDRESS": f"127.0.0.1:{self.proxies[i].port}"}
        return self._spawn(f"worker-{i}", args, address, env)

    def cut_connections(self) -> int:
        """Reset every router -> worker connection now; return how many were open."""
        return sum(proxy.cut() for proxy in self.proxies)

    def kill(self, name: str) -> None:
        """kill -9: no drain, no deregistration, sockets reset by the kernel."""
        process = self.services.pop(name).process
        process.kill()
        process.wait(10)

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.services[name].process.pid, sig)

    def register(self, model: model_pb2.Model, timeout_s: float = 10) -> None:
        with grpc.insecure_channel(self.registry_address) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
                registry_pb2.RegisterModelRequest(model=model), timeout=timeout_s
            )

    def versions(self, name: str) -> set[str]:
        with grpc.insecure_channel(self.registry_address) as channel:
            reply = registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
                registry_pb2.ListModelsRequest(name=name, page_size=1000), timeout=10
            )
        return {m.version for m in reply.models}

    def running_sequences(self) -> int:
        """Sequences decoding on the workers now (asked on their own ports)."""
        total = 0
        for port in self.worker_ports:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = worker_pb2_grpc.WorkerServiceStub(channel).GetStatus(
                    worker_pb2.GetStatusRequest(), timeout=5
                )
            total += sum(m.running_sequences for m in reply.status.models)
        return total

    def healthy_workers(self) -> int:
        with grpc.insecure_channel(self.router_address) as channel:
            reply = router_pb2_grpc.RouterServiceStub(channel).ListWorkers(
                router_pb2.ListWorkersRequest(), timeout=5
            )
        return sum(1 for w in reply.workers if w.healthy)

    def _spawn(
        self, name: str, args: list[str], address: str, env: dict[str, str] | None = None
    ) -> ServiceProcess:
        log = self.data_dir / "logs" / f"{name}.log"
        service = spawn_service(name, args, address, log, {**self.env(), **(env or {})})
        self.services[name] = service
        return service


@dataclass(frozen=True)
class Ended:
    """How one request ended: its phase (at start), its duration and its status."""

    phase: str
    seconds: float
    code: str  # "OK" or a grpc.StatusCode name
    details: str = ""
    tokens: int = 0
    attempt: int = 0  # the router's attempt that served it (GenerationStarted.attempt)


def request(max_tokens: int = 30) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=MODEL,
        prompt="Tell me about the mesh under stress",
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


class SteadyLoad:
    """`clients` threads generating through the router back to back until stopped."""

    def __init__(self, router_address: str, clients: int = 4) -> None:
        self.phase = "starting"
        self.ended: list[Ended] = []
        self._marks: list[tuple[str, float]] = [(self.phase, time.monotonic())]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(router_address)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE_S + 5)
        self._channel.close()

    @contextlib.contextmanager
    def during(self, phase: str, *, ended: int = 8, timeout_s: float = 60) -> Iterator[None]:
        """Label what starts from now `phase`; on leaving, wait until `ended` of its
        requests have ended, so every phase carries traffic whatever the machine's speed.
        What starts after that, until the next phase, is `<phase>, recovering`."""
        self._mark(phase)
        yield
        self.wait(lambda: len(self.of(phase)) >= ended, f"{ended} requests in {phase!r}", timeout_s)
        self._mark(f"{phase}, recovering")

    @property
    def phases(self) -> list[tuple[str, float]]:
        """Every phase in order with the seconds it lasted (the last one: until now)."""
        ends = [t for _, t in self._marks[1:]] + [time.monotonic()]
        return [(name, end - t) for (name, t), end in zip(self._marks, ends, strict=True)]

    def _mark(self, phase: str) -> None:
        self.phase = phase
        self._marks.append((phase, time.monotonic()))

    def of(self, phase: str) -> list[Ended]:
        with self._lock:
            return [e for e in self.ended if e.phase == phase]

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in {timeout_s:.0f} s: {what}")
            time.sleep(0.05)

    def _client(self) -> None:
        while not self._stop.is_set():
            outcome = self._one()
            with self._lock:
                self.ended.append(outcome)

    def _one(self) -> Ended:
        phase, started, tokens, attempt = self.phase, time.monotonic(), 0, 0
        try:
            for event in self._stub.Generate(request(), timeout=DEADLINE_S):
                kind = event.WhichOneof("event")
                tokens += kind == "delta"
                attempt = event.started.attempt if kind == "started" else attempt
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            return Ended(phase, time.monotonic() - started, code.name, details, tokens, attempt)
        return Ended(phase, time.monotonic() - started, "OK", tokens=tokens, attempt=attempt)
