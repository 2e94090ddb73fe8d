"""A real PostgreSQL for tests: from MODELYARD_TEST_POSTGRES_URL, or started by scripts/postgres.sh.

In CI (CI=true) a missing PostgreSQL fails the tests that need it: nothing is
skipped there. Elsewhere the tests start one with the script (it installs
PostgreSQL with apt when it can) and skip, saying why, only if that fails.
Each test session gets its own database, and `reset_database` empties it
between tests, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

ENV_VAR = "MODELYARD_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def server_url() -> str:
    """The URL of a running server (its default database); fail in CI, else skip, if none."""
    url = os.environ.get(ENV_VAR, "")
    if url:
        return url
    why = f"{ENV_VAR} is not set"
    if in_ci():
        pytest.fail(f"{why}: CI must provide PostgreSQL (scripts/test.sh runs {SCRIPT.name})")
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600, check=True
        )
    except (OSError, subprocess.SubprocessError) as err:
        stderr = getattr(err, "stderr", "") or ""
        pytest.skip(f"{why} and {SCRIPT.name} could not start PostgreSQL: {err} {stderr[-500:]}")
    url = done.stdout.strip().splitlines()[-1]
    os.environ[ENV_VAR] = url  # child processes and later sessions reuse it
    return url


def create_test_database(url: str) -> str:
    """A new empty database on the server at `url`; returns its URL."""
    name = f"modelyard_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await engine.dispose()

    _run(create)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_test_database(url: str, test_url: str) -> None:
    name = make_url(test_url).database

    async def drop() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await engine.dispose()

    _run(drop)


def _run(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # In a thread of its own: session fixtures may be set up while a test's loop runs.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work()).result()


async def reset_database(url: str) -> None:
    """Drop every table of the test database (the next store migrates it afresh)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()
