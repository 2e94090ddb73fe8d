"""The router's response cache: complete answers to deterministic requests, per route.

key.py decides whether a request may be cached and names it; entry.py is what is stored;
memory.py (in-process LRU) and remote.py (Redis-compatible, shared by replicas) hold
entries; cache.py puts them together and never lets a backend fail a request; hook.py is
what the relay calls.
"""

from router.cache.cache import ResponseCache
from router.cache.hook import CACHE_HEADER, CacheHook, Lookup, cache_header

__all__ = ["CACHE_HEADER", "CacheHook", "Lookup", "ResponseCache", "cache_header"]
