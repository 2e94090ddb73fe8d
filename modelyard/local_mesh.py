"""Run registry, worker(s) and router as child processes on loopback.

`modelyard up` and the integration tests both use this: each service is a real
process (`python -m modelyard <service> serve`), ready once its grpc.health.v1
check answers SERVING. Children die with their parent (PR_SET_PDEATHSIG on
Linux) and are stopped SIGTERM-first, so nothing is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.tickets import write_key_pair
from modelyard.tls import tls_from_env

_PR_SET_PDEATHSIG = 1
LOCAL_ROUTER_ID = "local-router"  # the router id its tickets name, with direct streams


class ServiceFailed(RuntimeError):
    """A child service exited or did not become healthy in time."""


# Ports handed out by free_port in this process: two calls before either port is bound
# must not return the same one.
_handed_out: set[int] = set()
_port_rng = random.Random(os.getpid() ^ time.monotonic_ns())


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a service started a moment later.

    Chosen below the kernel's ephemeral range: a port bind(0) hands out lies in that range,
    and any outgoing connection made before the service binds may take it as its source
    port (seen in CI as "Address already in use" seconds after the port was free)."""
    low, _high = _ephemeral_range()
    floor = max(1024, low - 12_000)
    for _ in range(200):
        port = _port_rng.randrange(floor, low)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded host: the old way
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_is_free(port: int) -> bool:
    """No process listens on the port (connections left in TIME_WAIT do not count: the
    services bind with SO_REUSEADDR, as gRPC does, so they can take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


DIE_WITH_PARENT_ENV = "MODELYARD_DIE_WITH_PARENT"


def die_with_parent() -> None:
    """In a service spawned by `spawn_service`: ask the kernel to SIGTERM this process
    when the parent that spawned it dies, even by SIGKILL (Linux only).

    Done by the child itself at start rather than in a preexec_fn: with no Python code
    between fork and exec, subprocess uses vfork, which runs no pthread_atfork handlers;
    gRPC's fork handlers abort a child forked while another thread is inside gRPC.
    """
    parent = os.environ.pop(DIE_WITH_PARENT_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the request took effect
        raise SystemExit(1)


@dataclass
class ServiceProcess:
    """One running service."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # The child's extra environment: its MODELYARD_<SERVICE>_TLS_* decide how to check health.
    env: Mapping[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Block until the health check says SERVING; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._health_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise ServiceFailed(
                        f"{self.name} exited with code {self.process.returncode}; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise ServiceFailed(
                        f"{self.name} on {self.address} not healthy after {timeout_s:.0f} s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def wait_listening(self, address: str, timeout_s: float = 60.0) -> None:
        """Block until `address` (another port of this service) accepts TCP connections."""
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServiceFailed(
                    f"{self.name} exited with code {self.process.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServiceFailed(
                    f"{self.name} not listening on {address} after {timeout_s:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _health_channel(self) -> grpc.Channel:
        # The service's own TLS settings, as the Helm chart's exec probe does.
        service = self.name.partition("-")[0]  # "worker-0" -> worker
        tls = tls_from_env(service, {**os.environ, **self.env})
        # Retry the connection often: gRPC's default backoff grows to minutes, so a
        # service slow to bind (a loaded machine) would be seen long after it serves.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        if not tls.enabled:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, tls.channel_credentials(), options=options)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (graceful), then SIGKILL after timeout_s. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn_service(
    name: str,
    args: Sequence[str],
    address: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> ServiceProcess:
    """Start `python -m modelyard <args>` with output going to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {}), DIE_WITH_PARENT_ENV: str(os.getpid())}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            # Own process group: a terminal Ctrl-C reaches only `up`, which then
            # stops the children in order.
            start_new_session=True,
        )
    return ServiceProcess(name, address, process, log_path, dict(env or {}))


@dataclass
class LocalMesh:
    """Registry + workers + router on loopback, as separate processes."""

    data_dir: Path
    registry_port: int = 0
    router_port: int = 0
    worker_ports: Sequence[int] = (0,)
    worker_threads: int | None = None
    # The router's OpenAI-compatible HTTP front: None keeps it off, 0 picks a free port.
    router_http_port: int | None = None
    # False: the router is given no --worker and learns its workers from discovery only.
    static_workers: bool = True
    # One /metrics port per worker (its --metrics-port), where workers should serve them:
    # the environment's MODELYARD_WORKER_METRICS_PORT would give every worker the same.
    worker_metrics_ports: Sequence[int] = ()
    # Direct streams (PickWorker, generate(..., direct=True)): a fresh Ed25519 ticket key
    # pair in data_dir/tickets (0600) and a reporter token for the workers' outcome reports.
    direct_streams: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    services: list[ServiceProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry_port = self.registry_port or free_port()
        self.router_port = self.router_port or free_port()
        self.worker_ports = [p or free_port() for p in self.worker_ports]
        if self.router_http_port is not None:
            self.router_http_port = self.router_http_port or free_port()

    @property
    def registry_address(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.router_port}"

    @property
    def worker_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.worker_ports]

    @property
    def router_http_address(self) -> str | None:
        """host:port of the router's OpenAI-compatible front, None when it is off."""
        if self.router_http_port is None:
            return None
        return f"127.0.0.1:{self.router_http_port}"

    def start(self, timeout_s: float = 90.0) -> None:
        """Start every service and wait until all are healthy; on failure stop what started.

        Registry and workers start first (side by side) and the router only once they are
        healthy: a router started beside them finds nothing listening, its channels back
        off (up to 2 s), and a request sent right after `start()` returns would fail fast
        with "registry ... is unreachable and the model list is not cached".
        """
        logs = self.data_dir / "logs"
        router_env, worker_env = self._service_envs()
        try:
            self.services.append(
                spawn_service(
                    "registry",
                    [
                        "registry",
                        "serve",
                        "--address",
                        self.registry_address,
                        "--database-url",
                        f"sqlite+aiosqlite:///{self.data_dir / 'registry.db'}",
                    ],
                    self.registry_address,
                    logs / "registry.log",
                    self.env,
                )
            )
            for i, address in enumerate(self.worker_addresses):
                args = ["worker", "serve", "--address", address, "--worker-id", f"worker-{i}"]
                # Workers load only what the registry knows (by name@version).
                args += ["--registry-address", self.registry_address]
                if self.worker_threads:
                    args += ["--threads", str(self.worker_threads)]
                if self.worker_metrics_ports:
                    args += ["--metrics-port", str(self.worker_metrics_ports[i])]
                self.services.append(
                    spawn_service(
                        f"worker-{i}", args, address, logs / f"worker-{i}.log", worker_env
                    )
                )
            for service in self.services:
                service.wait_healthy(timeout_s)
            router_args = self._router_args()
            router = spawn_service(
                "router", router_args, self.router_address, logs / "router.log", router_env
            )
            self.services.append(router)
            router.wait_healthy(timeout_s)
            if self.router_http_address is not None:
                # gRPC health turns SERVING before the router binds its HTTP front.
                router.wait_listening(self.router_http_address, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _service_envs(self) -> tuple[dict[str, str], dict[str, str]]:
        """The router's and the workers' environments: `env`, and with direct streams the
        ticket key (private for the router, public for workers) and the reporter token."""
        router, worker = dict(self.env), dict(self.env)
        if not self.direct_streams:
            return router, worker
        keys = self.data_dir / "tickets"
        private, public = keys / "ticket.pem", keys / "ticket.pub.pem"
        write_key_pair(private, public)
        token = secrets.token_urlsafe(32)
        router |= {
            "MODELYARD_ROUTER_TICKET_KEY": f"local:{private}",
            "MODELYARD_ROUTER_ROUTER_ID": LOCAL_ROUTER_ID,
            "MODELYARD_ROUTER_OUTCOME_REPORTER_TOKENS": f"workers:{token}",
        }
        worker |= {
            "MODELYARD_WORKER_TICKET_KEYS": f"local:{public}",
            "MODELYARD_WORKER_OUTCOME_ROUTERS": json.dumps({LOCAL_ROUTER_ID: self.router_address}),
            "MODELYARD_WORKER_OUTCOME_TOKEN": token,
        }
        return router, worker

    def _router_args(self) -> list[str]:
        args = ["router", "serve", "--address", self.router_address]
        args += ["--registry-address", self.registry_address]
        if self.static_workers:
            for address in self.worker_addresses:
                args += ["--worker", address]
        if self.router_http_address is not None:
            args += ["--http-address", self.router_http_address]
        return args

    def service(self, name: str) -> ServiceProcess:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def stop(self) -> None:
        """Stop the router first (no new requests), then workers, then the registry."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
