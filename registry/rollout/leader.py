"""Which registry replica runs the rollout controller.

On PostgreSQL: the one holding a session advisory lock, on a connection of its own kept
for as long as it leads (a replica that dies drops the connection, and with it the lock,
so another takes over at its next tick). SQLite is one process: it always leads.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# Any constant shared by every replica, not the migration's nor the folding's lock.
LOCK_ID = 0x726F6C6C6F7574


class Leadership:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    @property
    def shared(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    async def hold(self) -> bool:
        """True when this process leads now (taking the lead when it is free)."""
        if not self.shared:
            return True
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("rollout leadership lost with its database connection")
                await self._drop()
        conn = await (await self._engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:id)"), {"id": LOCK_ID})
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        log.info("this registry now runs the rollout controller")
        return True

    async def release(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": LOCK_ID})
            finally:
                await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("closing the leadership connection failed", exc_info=True)
