"""The one clock the fake reads: real (wall time) or virtual (moved by tests / the control API)."""

from __future__ import annotations

import threading
import time


class RealClock:
    virtual = False

    def now(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> float:
        raise ValueError("the clock is real; start the fake with clock=virtual to advance it")


class VirtualClock:
    """Stands still until advanced. Advancing steps through every due job in time order,
    so each runs at its own due time (a retry 1 s after a failure is 1 s after it), as a
    discrete-event simulation. Listeners are schedulers: `next_due()` and `run_due()`."""

    virtual = True

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else start
        self._lock = threading.RLock()
        self.listeners: list = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            target = self._now + seconds
            while True:
                dues = [(d, i) for i, lst in enumerate(self.listeners)
                        if (d := lst.next_due()) is not None and d <= target]
                if not dues:
                    break
                due, index = min(dues)
                self._now = max(self._now, due)
                self.listeners[index].run_due()
            self._now = target
            return target


def make_clock(kind: str):
    if kind == "virtual":
        return VirtualClock()
    if kind == "real":
        return RealClock()
    raise ValueError(f"clock must be 'real' or 'virtual', got {kind!r}")
