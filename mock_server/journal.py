"""The request journal, written behind the requests: each API request adds one entry to a
buffer in memory, appended to the store in one write by the process's scheduler thread on each
of its rounds (every 20-50 ms). The request that fills the buffer to FLUSH_AT entries asks for a
round at once (`hand_off`); only where no scheduler thread runs (a virtual clock) does it write
them itself. A request never waits for the journal; on a shared store that is one write
transaction less per request. On an event-loop server the loop takes this over (onloop.py:
`try_flush`, which never waits for the store's lock), and the scheduler thread writes only what
the loop could not.

Reads in this process flush first, so they see every request this process answered; entries
of other worker processes appear within one scheduler round. The buffer is bounded (the
journal keeps the newest `limit` entries anyway); a crash loses at most the unflushed entries
(the journal is a diagnostic record: tasks, credits and callbacks are never buffered).
"""

from __future__ import annotations

import threading
from collections import deque

FLUSH_AT = 256
JOURNAL = "requests"


class RequestJournal:
    def __init__(self, store, limit: int, hand_off=None):
        self.store, self.limit = store, limit
        # hand_off(): ask another thread to flush soon; False if none will (then add() flushes)
        self.hand_off = hand_off
        self._buf: deque = deque(maxlen=max(limit, 1))  # past `limit` the oldest would not be kept anyway
        self._flush_lock = threading.Lock()
        self._buf_lock = threading.Lock()  # add() and a failed write's put-back (threads of the pool add too)

    def __len__(self) -> int:
        """Entries buffered, not yet in the store."""
        return len(self._buf)

    def add(self, entry: dict) -> None:
        with self._buf_lock:
            self._buf.append(entry)
        if len(self._buf) >= FLUSH_AT and not (self.hand_off is not None and self.hand_off()):
            try:
                self.flush()
            except Exception:  # a store hiccup: the entries stay for the next flush
                pass

    def flush(self) -> None:
        """Append the buffered entries to the store, oldest first."""
        with self._flush_lock:
            self._write(self.store.log_many)

    def try_flush(self) -> bool:
        """flush, unless that would wait: False (the entries stay buffered) while another writer
        holds the store's write lock, or another thread is flushing."""
        if not self._flush_lock.acquire(blocking=False):
            return False
        try:
            return self._write(self.store.try_log_many) is not False
        finally:
            self._flush_lock.release()

    def _write(self, write):
        """write(journal, entries, limit) the buffered entries (the flush lock held); what it answered."""
        batch = []
        while self._buf:
            batch.append(self._buf.popleft())
        if not batch:
            return None
        try:
            written = write(JOURNAL, batch, self.limit)
        except Exception:
            self._put_back(batch)
            raise
        if written is False:
            self._put_back(batch)
        return written

    def _put_back(self, batch: list) -> None:
        # Back in front of what arrived meanwhile; if that no longer all fits, the oldest are
        # dropped (as the journal would), never the newest.
        with self._buf_lock:
            room = (self._buf.maxlen or len(batch)) - len(self._buf)
            self._buf.extendleft(reversed(batch[-room:] if room > 0 else []))

    def clear(self) -> None:
        """Forget the buffered entries (the store is being reset)."""
        with self._flush_lock:
            self._buf.clear()

    def read(self, limit: int = 100, **match) -> list[dict]:
        self.flush()
        return self.store.read_log(JOURNAL, limit, **match)
