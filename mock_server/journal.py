"""The request journal, written behind the requests: each API request adds one entry to a
buffer in memory, and a background thread appends the buffer to the store in one write every
FLUSH_EVERY seconds. A request never waits for the journal; on a shared store that is one
write transaction less per request.

Reads in this process flush first, so they see every request this process answered; entries
of other worker processes appear within FLUSH_EVERY. The buffer is bounded (the journal keeps
the newest `limit` entries anyway); a crash loses at most the last FLUSH_EVERY of entries
(the journal is a diagnostic record: tasks, credits and callbacks are never buffered).
"""

from __future__ import annotations

import os
import threading
from collections import deque

FLUSH_EVERY = 0.05
JOURNAL = "requests"


class RequestJournal:
    def __init__(self, store, limit: int):
        self.store, self.limit = store, limit
        self._buf: deque = deque(maxlen=max(limit, 1))
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._pid = None  # the process whose flusher thread runs

    def add(self, entry: dict) -> None:
        self._buf.append(entry)
        if self._pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._wake = threading.Event()
            threading.Thread(target=self._loop, name="kie-mock-journal", daemon=True).start()

    def _loop(self) -> None:
        pid = self._pid
        while not self._closed and os.getpid() == pid:
            self._wake.wait(FLUSH_EVERY)
            try:
                self.flush()
            except Exception:  # a store hiccup: keep the entries for the next round
                pass

    def flush(self) -> None:
        """Append the buffered entries to the store, oldest first."""
        with self._flush_lock:
            batch = []
            while self._buf:
                batch.append(self._buf.popleft())
            if not batch:
                return
            try:
                self.store.log_many(JOURNAL, batch, self.limit)
            except Exception:
                self._buf.extendleft(reversed(batch))
                raise

    def clear(self) -> None:
        """Forget the buffered entries (the store is being reset)."""
        with self._flush_lock:
            self._buf.clear()

    def read(self, limit: int = 100, **match) -> list[dict]:
        self.flush()
        return self.store.read_log(JOURNAL, limit, **match)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
