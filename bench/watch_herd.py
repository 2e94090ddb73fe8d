"""Watchers over gRPC: many Watch streams opening at once against a registry server, as
after a registry restart, with the watchers in a process of their own so the registry's
CPU is its own.

The bench side (`grpc_herd`) serves the store on loopback in this process and starts
`python -m bench.watch_herd PORT N`, which opens N Watch streams on one channel, takes
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


async def grpc_herd(store: RegistryStore, watchers: int) -> Herd:
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store), [SERVICE_NAME]
    )
    try:
        encodings = store.snapshot_encodings
        cpu = _cpu_s()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.watch_herd",
            str(running.port),
            str(watchers),
            stdout=asyncio.subprocess.PIPE,
        )
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


async def _watch_all(port: int, count: int) -> dict[str, float]:
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
        calls = [watches[i % len(watches)](registry_pb2.WatchRequest()) for i in range(count)]
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
    json.dump(asyncio.run(_watch_all(int(sys.argv[1]), int(sys.argv[2]))), sys.stdout)
