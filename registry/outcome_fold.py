"""Downsampling of outcomes: raw rows past their retention fold into fixed windows (sums
plus latency histograms, which merge by adding), windows past theirs are deleted; all in
bounded batches, by one background task per registry process.

On PostgreSQL, replicas fold one at a time (an advisory lock in the batch's transaction):
two replicas folding the same rows would count them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from registry.database import WRITE_FIRST
from registry.outcomes import OutcomeStore, dialect_insert
from registry.tables import WINDOW_SUMS, OutcomeRow, OutcomeWindowLatencyRow, OutcomeWindowRow

log = logging.getLogger(__name__)

FOLD_BATCH = 2000
MAX_BATCHES_PER_PASS = 50  # then yield the database to other work until the next pass
# Any constant shared by every replica, not the migration lock's.
FOLD_LOCK_ID = 0x6F7574636F6D65
_Key = tuple[int, str, str, str, str]


async def fold_once(store: OutcomeStore, batch: int = FOLD_BATCH) -> int:
    """Fold up to `batch` expired raw outcomes into windows; returns how many it folded."""
    cutoff = store.now_ms() - int(store.retention.raw_s * 1000)
    window_ms = store.retention.window_s * 1000
    async with store.sessions() as session:
        await _lock(session, store.engine.dialect.name)
        rows = (
            await session.scalars(
                select(OutcomeRow)
                .where(OutcomeRow.finished_at_ms < cutoff)
                .order_by(OutcomeRow.finished_at_ms)
                .limit(batch)
            )
        ).all()
        if not rows:
            return 0
        sums, buckets = _aggregate(rows, window_ms)
        await _add_windows(session, store.engine.dialect.name, sums, buckets)
        await session.execute(
            delete(OutcomeRow).where(OutcomeRow.request_id.in_([r.request_id for r in rows]))
        )
        await session.commit()
    return len(rows)


async def expire_windows(store: OutcomeStore) -> None:
    cutoff = store.now_ms() - int(store.retention.windows_s * 1000)
    async with store.sessions() as session:
        for table in (OutcomeWindowRow, OutcomeWindowLatencyRow):
            await session.execute(delete(table).where(table.window_start_ms < cutoff))
        await session.commit()


async def fold_pass(store: OutcomeStore, batch: int = FOLD_BATCH) -> int:
    folded = 0
    for _ in range(MAX_BATCHES_PER_PASS):
        done = await fold_once(store, batch)
        folded += done
        if done < batch:
            break
    await expire_windows(store)
    return folded


async def run_folding(store: OutcomeStore, interval_s: float) -> None:
    """The registry's background task: a pass every `interval_s` until cancelled."""
    while True:
        try:
            folded = await fold_pass(store)
            if folded:
                log.info("folded %d outcomes into %ds windows", folded, store.retention.window_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database may be away for a while; the next pass tries again.
            log.exception("folding outcomes failed; retrying in %.0fs", interval_s)
        await asyncio.sleep(interval_s)


def start_folding(store: OutcomeStore, interval_s: float) -> asyncio.Task[None]:
    return asyncio.create_task(run_folding(store, interval_s), name="outcome-folding")


async def stop_folding(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _lock(session: AsyncSession, dialect: str) -> None:
    if dialect == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": FOLD_LOCK_ID})
    else:  # SQLite: the write lock before the read (registry.database.WRITE_FIRST)
        await session.connection(execution_options=WRITE_FIRST)


def _aggregate(
    rows: Any, window_ms: int
) -> tuple[dict[_Key, dict[str, float]], dict[tuple[_Key, str, int], int]]:
    sums: dict[_Key, dict[str, float]] = {}
    buckets: dict[tuple[_Key, str, int], int] = {}
    for row in rows:
        key: _Key = (
            row.finished_at_ms // window_ms * window_ms,
            row.model,
            row.version,
            row.route,
            row.arm,
        )
        s = sums.setdefault(key, dict.fromkeys(WINDOW_SUMS, 0.0))
        s["requests"] += 1
        s["errors"] += row.status_code != 0
        s["input_tokens"] += row.input_tokens
        s["output_tokens"] += row.output_tokens
        s["cached_input_tokens"] += row.cached_input_tokens
        s["cached_requests"] += row.cached
        s["cost_usd"] += row.cost_usd
        if row.feedback_score is not None:
            s["feedback_sum"] += row.feedback_score
            s["feedback_count"] += 1
        for kind, bucket in (("ttft", row.ttft_bucket), ("total", row.total_bucket)):
            if bucket is not None:
                buckets[(key, kind, bucket)] = buckets.get((key, kind, bucket), 0) + 1
    return sums, buckets


async def _add_windows(
    session: AsyncSession,
    dialect: str,
    sums: dict[_Key, dict[str, float]],
    buckets: dict[tuple[_Key, str, int], int],
) -> None:
    insert = dialect_insert(dialect)
    names = ("window_start_ms", "model", "version", "route", "arm")
    for key, values in sums.items():
        row = {**dict(zip(names, key, strict=True)), **_typed(values)}
        statement = insert(OutcomeWindowRow).values(row)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=list(names),
                set_={n: getattr(OutcomeWindowRow, n) + statement.excluded[n] for n in WINDOW_SUMS},
            )
        )
    for (key, kind, bucket), count in buckets.items():
        row = {**dict(zip(names, key, strict=True)), "kind": kind, "bucket": bucket, "count": count}
        statement = insert(OutcomeWindowLatencyRow).values(row)
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[*names, "kind", "bucket"],
                set_={"count": OutcomeWindowLatencyRow.count + statement.excluded["count"]},
            )
        )


def _typed(values: dict[str, float]) -> dict[str, float | int]:
    return {k: (v if k in ("cost_usd", "feedback_sum") else int(v)) for k, v in values.items()}
