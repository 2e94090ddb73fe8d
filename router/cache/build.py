"""The response cache a router's settings ask for: a shared store, an in-process LRU, or
none."""

from __future__ import annotations

from router.cache.cache import ResponseCache
from router.cache.memory import MemoryBackend
from router.cache.remote import RemoteBackend
from router.config import RouterSettings
from router.metrics import ResponseCacheMetrics


def build_response_cache(
    settings: RouterSettings, metrics: ResponseCacheMetrics | None
) -> ResponseCache | None:
    timeout_s = settings.response_cache_timeout_s
    if settings.response_cache_redis_url:
        remote = RemoteBackend(
            settings.response_cache_redis_url,
            prefix=settings.response_cache_redis_prefix,
            max_entry_bytes=settings.response_cache_max_entry_bytes,
            timeout_s=timeout_s,
        )
        return ResponseCache(remote, timeout_s=timeout_s, metrics=metrics, name="redis")
    if settings.response_cache_max_bytes <= 0:
        return None
    memory = MemoryBackend(
        settings.response_cache_max_bytes,
        max_entry_bytes=settings.response_cache_max_entry_bytes,
        on_evict=metrics.evictions.inc if metrics is not None else lambda _n: None,
    )
    if metrics is not None:
        metrics.bytes.set_function(lambda: memory.bytes_held)
    return ResponseCache(memory, timeout_s=timeout_s, metrics=metrics, name="memory")
