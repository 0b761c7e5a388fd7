"""State of the fake behind one interface (`base.Store`), with interchangeable backends.

- `memory`: one process, fastest (tests, single-worker serve);
- `sqlite:PATH`: survives restarts, shared by the worker processes of one machine;
- `redis://...`: shared by several instances behind a load balancer.
"""

from __future__ import annotations

from ..config import mask_url
from .base import Store
from .memory import MemoryStore


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def networked(url: str) -> bool:
    """A store reached over the network (Redis): each call is a round trip, worth overlapping in
    threads rather than waited for on an event loop."""
    return url.startswith(REDIS_SCHEMES)


def open_store(url: str) -> Store:
    if url in ("memory", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:"):] or ":memory:")
    if networked(url):
        from .redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown store {mask_url(url)!r}: use memory, sqlite:PATH or redis://HOST:PORT/DB")


__all__ = ["Store", "MemoryStore", "open_store", "networked"]
