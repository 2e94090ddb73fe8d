"""The shared backend: a Redis-compatible server (Redis, Valkey, KeyDB ...) that every
router replica uses, through redis-py's asyncio client.

Entries are written with SETEX under a key prefix, so the server expires them and an
operator can find (and flush) the router's keys; values over the per-entry cap are not
written. The `redis` package is imported only when this backend is configured.
"""

from __future__ import annotations

from typing import Any


class RemoteBackend:
    def __init__(self, url: str, *, prefix: str, max_entry_bytes: int, timeout_s: float) -> None:
        # Optional: imported only when a shared store is configured.
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as err:
            raise RuntimeError(
                "MODELYARD_ROUTER_RESPONSE_CACHE_REDIS_URL needs the redis package: "
                "pip install 'modelyard[redis]'"
            ) from err

        self.max_entry_bytes = max_entry_bytes
        self._prefix = prefix
        # Socket timeouts bound a hung server; the cache's own deadline bounds the rest.
        self._client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No retries: a miss is cheaper than a request waiting on a sick store.
            retry=Retry(NoBackoff(), 0),
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self._prefix + key)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> bool:
        if len(value) > self.max_entry_bytes:
            return False
        # SET with EX is SETEX: the value and its expiry in one command.
        await self._client.set(self._prefix + key, value, ex=max(1, round(ttl_s)))
        return True

    async def close(self) -> None:
        await self._client.aclose()
