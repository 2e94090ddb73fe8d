"""Registry bench: load 10,000 models, time ListModels pages and the Watch snapshot
(read from the database after a write, shared while the catalogue has not changed, and
for 1,000 watchers starting at once, as after a registry restart, in process and over
gRPC from another process).

    .venv/bin/python -m bench.registry_bench [--models 10000] [--postgres-url URL]

Runs on SQLite (a temporary file, WAL, synchronous=FULL) and on PostgreSQL when
a URL is given or MODELYARD_TEST_POSTGRES_URL is set (scripts/postgres.sh prints
one; it uses a scratch database it creates and drops). Calls go through the
store in process, so the numbers are the database and the (de)serialization,
not gRPC, except the last column: 1,000 Watch streams over loopback gRPC from a
process of their own (bench/watch_herd.py), with the registry's CPU meanwhile.
Writes a markdown table to bench/results/registry.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.watch_herd import Herd, grpc_herd
from modelyard.v1 import model_pb2
from registry.store import ModelFilter, RegistryStore, open_store

PAGE_SIZES = (10, 100, 1000)
WATCHERS = 1000
RESULTS = Path(__file__).parent / "results" / "registry.md"


@dataclass
class Result:
    backend: str
    models: int
    load_s: float
    pages: dict[int, tuple[float, float, int]]  # size -> (p50 ms, p95 ms, pages timed)
    filtered: tuple[float, float]  # p50, p95 ms of a tag + label filtered page of 100
    snapshot_ms: tuple[float, float]  # p50, p95 of Watch's first event after a write
    cached_ms: tuple[float, float]  # the same, the catalogue unchanged since the last one
    herd_s: float  # WATCHERS watchers starting at once: until the last has its snapshot
    herd_reads: int  # database reads those watchers cost
    over_grpc: Herd  # WATCHERS Watch streams over gRPC, from another process
    resumed: Herd  # the same, resuming at the newest revision, until a write reaches all


def model(i: int) -> model_pb2.Model:
    return model_pb2.Model(
        name=f"model-{i // 4:05d}",
        version=str(i % 4 + 1),
        artifact=model_pb2.Artifact(
            uri=f"s3://models/{i}.gguf", sha256="0" * 64, format=model_pb2.ARTIFACT_FORMAT_GGUF
        ),
        capabilities=model_pb2.Capabilities(
            chat=i % 2 == 0, completion=True, context_length=4096, tags=["small", f"t{i % 10}"]
        ),
        pricing=model_pb2.Pricing(input_usd_per_1k_tokens=0.1, output_usd_per_1k_tokens=0.2),
        labels={"team": f"team-{i % 7}", "tier": "free" if i % 3 else "paid"},
        stage=model_pb2.STAGE_PRODUCTION if i % 4 == 3 else model_pb2.STAGE_STAGING,
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def load(store: RegistryStore, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        await store.register(model(i))
    return time.perf_counter() - started


async def time_pages(store: RegistryStore, size: int, limit: int = 200) -> tuple[float, float, int]:
    samples: list[float] = []
    token = ""
    for _ in range(limit):
        started = time.perf_counter()
        page = await store.list_models(page_size=size, page_token=token)
        samples.append((time.perf_counter() - started) * 1000)
        token = page.next_page_token or ""  # wrap around to the first page
    return (*percentiles(samples), len(samples))


async def run(backend: str, url: str, count: int) -> Result:
    store = await open_store(url)
    try:
        load_s = await load(store, count)
        pages = {size: await time_pages(store, size) for size in PAGE_SIZES}
        filtered: list[float] = []
        for _ in range(50):
            started = time.perf_counter()
            await store.list_models(
                ModelFilter(tags=("t3",), label_selector="tier=paid,team!=team-1"), page_size=100
            )
            filtered.append((time.perf_counter() - started) * 1000)
        fresh: list[float] = []
        for i in range(5):  # a write first: the revision moves, the snapshot is read
            await store.register(model(count + i))
            fresh.append(await snapshot_ms(store, count + i + 1))
        cached = [await snapshot_ms(store, count + 5) for _ in range(5)]
        herd_s, reads = await herd(store, count + 6)
        await store.register(model(count + 6))
        over_grpc = await grpc_herd(store, WATCHERS)
        resumed = await grpc_herd(store, WATCHERS, write=lambda: store.register(model(count + 7)))
        return Result(
            backend,
            count,
            load_s,
            pages,
            percentiles(filtered),
            percentiles(fresh),
            percentiles(cached),
            herd_s,
            reads,
            over_grpc,
            resumed,
        )
    finally:
        await store.close()


async def snapshot_ms(store: RegistryStore, expect: int) -> float:
    """Watch from scratch: ms to its first event, the snapshot of `expect` models."""
    started = time.perf_counter()
    stream = store.watch(0)
    event = await anext(stream)
    elapsed = (time.perf_counter() - started) * 1000
    await stream.aclose()
    assert len(event.snapshot.models) == expect
    return elapsed


async def herd(store: RegistryStore, expect: int) -> tuple[float, int]:
    """WATCHERS watchers starting together after a write: (seconds until every one has
    its snapshot, database reads they cost)."""
    await store.register(model(expect - 1))
    reads = store.snapshot_reads
    streams = [store.watch(0) for _ in range(WATCHERS)]
    started = time.perf_counter()
    events = await asyncio.gather(*(anext(s) for s in streams))
    elapsed = time.perf_counter() - started
    for stream in streams:
        await stream.aclose()
    assert all(len(e.snapshot.models) == expect for e in events)
    return elapsed, store.snapshot_reads - reads


async def with_scratch_postgres(server_url: str, count: int) -> Result:
    name = f"modelyard_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            return await run("PostgreSQL", url, count)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def markdown(results: list[Result]) -> str:
    lines = [
        "# Registry bench",
        "",
        f"`python -m bench.registry_bench` on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; store called in process (no gRPC), except "
        f"the last column: {WATCHERS:,} Watch streams over loopback gRPC (50 per connection) "
        "from another process on the same cores, until the last has its snapshot, and the "
        "registry process's CPU meanwhile; and 1,000 resuming at the newest revision, as "
        "after a registry restart, until one write reaches them all. "
        "PostgreSQL is the test cluster of scripts/postgres.sh (fsync off).",
        "",
        "| backend | models | load (writes/s) | page 10 p50/p95 ms | page 100 p50/p95 ms "
        "| page 1000 p50/p95 ms | filtered page 100 p50/p95 ms | Watch snapshot p50/p95 ms "
        f"| unchanged catalogue p50/p95 ms | {WATCHERS:,} watchers at once "
        f"| {WATCHERS:,} watchers over gRPC | {WATCHERS:,} resuming over gRPC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r.over_grpc
        cells = [f"{r.pages[s][0]:.1f} / {r.pages[s][1]:.1f}" for s in PAGE_SIZES]
        lines.append(
            f"| {r.backend} | {r.models:,} | {r.models / r.load_s:,.0f} | "
            + " | ".join(cells)
            + f" | {r.filtered[0]:.1f} / {r.filtered[1]:.1f}"
            + f" | {r.snapshot_ms[0]:.0f} / {r.snapshot_ms[1]:.0f}"
            + f" | {r.cached_ms[0]:.2f} / {r.cached_ms[1]:.2f}"
            + f" | {r.herd_s:.2f} s, {r.herd_reads} database read(s)"
            + f" | {g.seconds:.1f} s, registry CPU {g.registry_cpu_s:.1f} s, "
            f"{g.snapshot_bytes / 1e6:.1f} MB serialized {g.encodings} time(s)"
            + f" | {r.resumed.seconds:.1f} s, registry CPU {r.resumed.registry_cpu_s:.1f} s |"
        )
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--postgres-url", default=os.environ.get("MODELYARD_TEST_POSTGRES_URL", ""))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"SQLite: loading {args.models:,} models...", flush=True)
        results.append(await run("SQLite", f"sqlite+aiosqlite:///{tmp}/bench.db", args.models))
    if args.postgres_url:
        print(f"PostgreSQL: loading {args.models:,} models...", flush=True)
        results.append(await with_scratch_postgres(args.postgres_url, args.models))
    else:
        print("PostgreSQL skipped: pass --postgres-url or set MODELYARD_TEST_POSTGRES_URL")
    table = markdown(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(table)


if __name__ == "__main__":
    asyncio.run(main())
