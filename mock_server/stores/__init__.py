"""State of the fake behind one interface (`base.Store`), with interchangeable backends.

- `memory`: one process, fastest (tests, single-worker serve);
- `sqlite:PATH`: survives restarts, shared by the worker processes of one machine;
- `redis://...`: shared by several instances behind a load balancer.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time

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


# SQLite's words for a file it cannot use (as opposed to a statement of ours that is wrong)
_SQLITE_UNAVAILABLE = ("disk i/o error", "unable to open database", "database or disk is full", "readonly database",
                       "database is locked", "malformed", "file is not a database")


class StoreLocked(TimeoutError):
    """The store's write lock stayed held by another process past the wait (SQLite)."""


def unavailable(exc: BaseException) -> str | None:
    """Why the store cannot be used, when `exc` says so (Redis down or unreachable, an SQLite
    file that cannot be read or written): a short reason for the answer and the log. None for
    any other exception (a bug of the fake)."""
    redis = sys.modules.get("redis")
    if redis is not None and isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        pass
    elif isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc).lower() for w in _SQLITE_UNAVAILABLE):
        pass
    elif isinstance(exc, StoreLocked):
        pass
    else:
        return None
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class OutageLog:
    """Says on stderr that the store is unavailable: at once the first time, then at most once
    every `every` seconds with the count meanwhile (an outage under load would otherwise write a
    line per request); and that it works again (`recovered`) after each outage it said. A store
    that fails and works by turns (a full disk: reads work, writes fail) gets two lines a period,
    and the last line is true: failures after an "answers again" are said within `every`."""

    def __init__(self, what: str, every: float = 10.0):
        self.what, self.every = what, every
        self._lock = threading.Lock()
        self._active = False  # a failure since the last recovery
        self._announced = False  # an "unavailable" line not yet followed by "answers again"
        self._said = None  # when the last "unavailable" line was written
        self._since_line = 0

    @property
    def active(self) -> bool:
        """A failure since the last recovery (a cheap check before `recovered`)."""
        return self._active

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._active = True
            self._since_line += 1
            if self._said is not None and now - self._said < self.every:
                return
            count, self._since_line, first = self._since_line, 0, self._said is None
            self._said, self._announced = now, True
        more = "" if first else f" ({count} times in the last {self.every:g} s)"
        print(f"kie-mock: {self.what}: the store is unavailable{more}: {reason}", file=sys.stderr, flush=True)

    def recovered(self) -> None:
        if not self._active:
            return
        with self._lock:
            self._active = False
            if not self._announced:
                return
            self._announced = False
        print(f"kie-mock: {self.what}: the store answers again", file=sys.stderr, flush=True)


# The API requests' outage log: a failed request says it (api.internal_error), a store read
# that worked ends it (Service.authenticate).
API_OUTAGE = OutageLog("API requests")

__all__ = ["Store", "MemoryStore", "open_store", "networked", "unavailable", "OutageLog", "API_OUTAGE", "StoreLocked"]
