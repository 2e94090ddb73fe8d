"""Watchers over gRPC: many Watch streams opening at once against a registry server, as
after a registry restart, with the watchers in a process of their own so the registry's
CPU is its own.

The bench side (`grpc_herd`) serves the store on loopback in this process and starts
`python -m bench.watch_herd PORT N SINCE`, which opens N Watch streams, takes
each first event as bytes (counted, not parsed: parsing is the watchers' cost, not the
registry's) and prints the seconds until the last arrived.
"""

from __future__ import annotations

import asyncio
import functools
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from modelyard.server import start_server
from modelyard.v1 import registry_pb2
from registry.auth import SERVICE_NAME
from registry.service import add_to_server
from registry.store import RegistryStore

WATCH = "/modelyard.v1.RegistryService/Watch"
PER_CONNECTION = 50


@dataclass
class Herd:
    watchers: int
    seconds: float  # from the first Watch sent until the last snapshot arrived
    registry_cpu_s: float  # this process's CPU (user + system) meanwhile
    snapshot_bytes: int
    encodings: int  # snapshots the registry serialized for them


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def grpc_herd(
    store: RegistryStore, watchers: int, write: Callable[[], Awaitable[object]] | None = None
) -> Herd:
    """`watchers` Watch streams from a process of their own, each until its first event.
    Without `write`, from scratch: that event is the snapshot. With it, resuming at the
    current revision, as after a registry restart: once all of them watch, `write` runs
    and its change is that first event."""
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store), [SERVICE_NAME]
    )
    try:
        since = 0 if write is None else await store.revision()
        encodings = store.snapshot_encodings
        cpu = _cpu_s()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.watch_herd",
            str(running.port),
            str(watchers),
            str(since),
            stdout=asyncio.subprocess.PIPE,
        )
        if write is not None:
            async with asyncio.timeout(120):
                await _every_one_watching(store, watchers)
            await write()
        out, _ = await child.communicate()
        cpu = _cpu_s() - cpu
        if child.returncode != 0:
            raise RuntimeError(f"watchers exited {child.returncode}")
        seen = json.loads(out)
        return Herd(
            watchers, seen["seconds"], cpu, seen["bytes"], store.snapshot_encodings - encodings
        )
    finally:
        await running.stop(0)


async def _every_one_watching(store: RegistryStore, watchers: int) -> None:
    while True:
        if store.hub.watchers >= watchers:
            return
        await asyncio.sleep(0.01)


async def _watch_all(port: int, count: int, since: int) -> dict[str, float]:
    # Watchers are workers and routers, each on a connection of its own (and a server
    # takes at most 512 streams per connection): one connection per PER_CONNECTION.
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        for _ in range(-(-count // PER_CONNECTION))
    ]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        watches = [
            channel.unary_stream(
                WATCH, request_serializer=registry_pb2.WatchRequest.SerializeToString
            )
            for channel in channels
        ]
        started = time.perf_counter()
        request = registry_pb2.WatchRequest(since_revision=since)
        calls = [watches[i % len(watches)](request) for i in range(count)]
        firsts = await asyncio.gather(*(call.read() for call in calls))
        seconds = time.perf_counter() - started
        for call in calls:
            call.cancel()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    sizes = {len(first) for first in firsts}
    if len(sizes) != 1:
        raise RuntimeError(f"watchers were sent different snapshots: sizes {sorted(sizes)}")
    return {"seconds": seconds, "bytes": sizes.pop()}


if __name__ == "__main__":
    port, count, since = map(int, sys.argv[1:4])
    json.dump(asyncio.run(_watch_all(port, count, since)), sys.stdout)
