"""One process holding many sim workers, for `bench.scale_mesh`: each a real worker (its
own gRPC server, model manager, sim engine, registry catalogue with its own Watch stream,
and Consul registration), all sharing this process's event loop, so a thousand workers
fit in a few processes on one machine.

    python -m bench.scale_hosts --first 0 --count 250 --registry ADDR --work DIR

Environment: the mesh's tokens and MODELYARD_CONSUL_ADDRESS (bench.scale_mesh sets them).
Each worker preloads two of the registered sim models (worker i: models i and i + 1,
modulo their number). Prints `ready N` once every worker is listening and registered,
then takes commands on stdin, one per line, answering each at once (it runs as a task):
`stop I` (deregister from Consul, then stop worker I: the churn of a scale-in),
`start I` (start worker I again: a scale-out), `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from modelyard.discovery import WORKER_SERVICE
from modelyard.discovery.consul import Registration, register_service
from worker.artifacts.settings import ArtifactSettings
from worker.auth import SERVICE_NAME
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

GiB = 1 << 30
log = logging.getLogger(__name__)


class Host:
    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._workers: dict[int, tuple[RunningWorker, Registration]] = {}

    async def start(self, i: int) -> None:
        a = self._args
        preload = a.work / f"preload-{i}.json"
        models = [f"sim-{(i + k) % a.models:02d}@1" for k in range(2)]
        preload.write_text(json.dumps(models))
        settings = WorkerSettings(
            address="127.0.0.1:0",
            worker_id=f"sim-worker-{i:04d}",
            threads=1,
            sim_engine=True,
            memory_budget_bytes=4 * GiB,
            registry_address=a.registry,
            preload=str(preload),
            artifacts=ArtifactSettings(cache_dir=a.work / "cache" / str(i)),
        )
        worker = await start_worker(settings)
        registration = register_service(
            name=WORKER_SERVICE,
            bind_address=settings.address,
            port=worker.port,
            host="127.0.0.1",
            service_id=settings.worker_id,
            grpc_service=SERVICE_NAME,
            meta={"engines": "sim", "device": "cpu"},
        )
        self._workers[i] = (worker, registration)

    async def stop(self, i: int) -> None:
        worker, registration = self._workers.pop(i)
        await registration.close()  # routers stop sending first, as a worker's serve does
        await worker.stop(grace_s=self._args.grace_s)

    async def run(self) -> None:
        a = self._args
        indexes = range(a.first, a.first + a.count)
        for batch in range(0, a.count, 50):  # bounded: each start opens a server and a Watch
            await asyncio.gather(*(self.start(i) for i in indexes[batch : batch + 50]))
        answer(f"ready {len(self._workers)}")
        # Commands run as tasks, so a draining worker does not hold up the next command;
        # one worker's commands run in order (a start waits for its own stop).
        pending: dict[int, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
            command, *rest = line
            if command == "quit":
                break
            i = int(rest[0])
            pending[i] = asyncio.ensure_future(self._after(pending.get(i), command, i))
            answer(f"{command} {i}")
        await asyncio.gather(*pending.values())
        await asyncio.gather(*(self.stop(i) for i in list(self._workers)))

    async def _after(self, before: asyncio.Future[None] | None, command: str, i: int) -> None:
        if before is not None:
            await before
        try:
            await (self.stop(i) if command == "stop" else self.start(i))
        except Exception:
            log.exception("%s of worker %d failed", command, i)


def answer(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--models", type=int, required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--grace-s", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(Host(args).run())


if __name__ == "__main__":
    main()
