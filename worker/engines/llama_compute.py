"""Every llama.cpp computation of this process on one OS thread.

ggml's CPU backend runs each graph with OpenMP, and libgomp keeps a team of threads
for every thread that ever started a parallel region, for as long as that thread
lives. Once those teams hold more threads than the machine has CPUs, libgomp stops
spinning at its barriers (GOMP_SPINCOUNT: 100 spins instead of 300,000), so each
llama_decode sleeps and wakes at every layer. With a decode thread per model, a
second SmolLM2 loaded and idle in the same worker cut the first one's decode from
75-85 to 19-50 tokens/s (2 cores, llama.cpp on both). So the models' decode loops
take turns here, one step each, and embeddings run here between steps: one team,
as many threads as one model uses. On CPU, two models computing at once would only
share the same cores.

A loop attaches with `attach` and is asked `has_work` under `cond` (its state is
guarded by that lock) and `turn` outside it; `turn` returning False detaches it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
T = TypeVar("T")


class Loop(Protocol):
    def has_work(self) -> bool:
        """Under `cond`: whether `turn` has anything to do."""
        ...

    def turn(self) -> bool:
        """One step (outside the lock); False once the loop has ended for good."""
        ...


class ComputeThread:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._loops: list[Loop] = []
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            collections.deque()
        )
        self._thread: threading.Thread | None = None

    @property
    def ident(self) -> int | None:
        """The OS thread's id once started (tests check every computation ran on it)."""
        return None if self._thread is None else self._thread.ident

    def attach(self, loop: Loop) -> None:
        with self.cond:
            self._loops.append(loop)
            self._ensure_started()
            self.cond.notify()

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the compute thread between two steps; its result or exception."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self.cond:
            self._calls.append((fn, future))
            self._ensure_started()
            self.cond.notify()
        return future

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llama-compute", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    calls = list(self._calls)
                    self._calls.clear()
                    busy = [loop for loop in self._loops if loop.has_work()]
                    if calls or busy:
                        break
                    self.cond.wait(IDLE_WAIT_S)
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as err:  # handed to the caller, never lost here
                        future.set_exception(err)
            for loop in busy:
                try:
                    ended = not loop.turn()
                except Exception:  # a loop's own bug must not stop every model's decoding
                    log.exception("llama.cpp compute loop failed a turn")
                    continue
                if ended:
                    with self.cond:
                        self._loops.remove(loop)


# One per process: the point is a single OpenMP team.
COMPUTE = ComputeThread()
