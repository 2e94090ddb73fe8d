"""Several router processes on one port: the way past one core's worth of routing.

A router is one asyncio loop; on a host with more cores, `processes` siblings each run a
whole router (loop, worker status watches, limits) and bind the same gRPC and HTTP
ports with SO_REUSEPORT, so the kernel spreads connections over them. This supervisor
only starts them, forwards a stop, and stops all of them when one dies (the pod restarts
as a whole, rather than serving on with part of its capacity).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from modelyard.local_mesh import DIE_WITH_PARENT_ENV, die_with_parent
from modelyard.server import host_of
from modelyard.telemetry import setup_logging
from router.config import RouterSettings
from router.main import STOP_GRACE_S
from router.main import run as run_one

log = logging.getLogger(__name__)

# A sibling past this after SIGTERM (its own grace plus the telemetry flush) is killed.
STOP_WAIT_S = STOP_GRACE_S + 10.0


def run_router(settings: RouterSettings) -> None:
    """The process entry point behind `modelyard router serve`."""
    if settings.processes == 1:
        run_one(settings)
    else:
        supervise(settings)


def sibling_settings(settings: RouterSettings, index: int) -> RouterSettings:
    """Sibling `index`'s settings: its own router id (stored outcomes tell the siblings
    apart) and /metrics port (each process has its own counters)."""
    router_id = f"{settings.router_id or socket.gethostname()}-{index}"
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    return settings.model_copy(update={"router_id": router_id, "metrics_port": metrics_port})


def supervise(settings: RouterSettings) -> None:
    """Run `settings.processes` siblings until SIGINT/SIGTERM or until one exits."""
    setup_logging(settings.log_level)
    for address in filter(None, (settings.address, settings.http_address)):
        check_free(address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Each sibling asks the kernel for SIGTERM when this process dies, even by SIGKILL.
    os.environ[DIE_WITH_PARENT_ENV] = str(os.getpid())
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    siblings = [
        spawn.Process(target=_sibling, args=(sibling_settings(settings, i), i), name=f"router-{i}")
        for i in range(settings.processes)
    ]
    for process in siblings:
        process.start()
    log.info("router: %d processes on %s", len(siblings), settings.address)
    failed = _wait(siblings, stop)
    for process in siblings:
        if process.is_alive():
            process.terminate()  # SIGTERM: each drains like a lone router
    for process in siblings:
        process.join(STOP_WAIT_S)
        if process.is_alive():
            log.error("%s did not stop in %.0f s: killed", process.name, STOP_WAIT_S)
            process.kill()
            process.join()
    if failed is not None:
        raise SystemExit(f"router: {failed.name} exited with status {failed.exitcode}")


def check_free(address: str) -> None:
    """Refuse a port another process listens on: with SO_REUSEPORT the siblings would
    bind it anyway and share its traffic."""
    host, port = host_of(address), int(address.rpartition(":")[2])
    family, kind, proto, _, bound = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            probe.bind(bound)
        except OSError as err:
            raise SystemExit(f"cannot bind {address}: {err.strerror or err}") from None


def _wait(siblings: Sequence[BaseProcess], stop: threading.Event) -> BaseProcess | None:
    """Until a stop signal (None) or a sibling's exit (that sibling)."""
    sentinels = {process.sentinel: process for process in siblings}
    while not stop.is_set():
        for ready in wait(list(sentinels), timeout=0.5):
            process = sentinels[ready]  # type: ignore[index]  # sentinels are ints
            log.error(
                "%s exited with status %s: stopping the others", process.name, process.exitcode
            )
            return process
    return None


def _sibling(settings: RouterSettings, index: int) -> None:
    # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
    # stops the siblings in order.
    os.setpgrp()
    die_with_parent()
    run_one(settings, sibling=index)
