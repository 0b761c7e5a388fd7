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
    """Stands still until advanced. Advancing fires what became due (see Scheduler.on_advance)."""

    virtual = True

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()
        self.listeners: list = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._now += seconds
            now = self._now
        for listener in list(self.listeners):
            listener(now)
        return now


def make_clock(kind: str):
    if kind == "virtual":
        return VirtualClock()
    if kind == "real":
        return RealClock()
    raise ValueError(f"clock must be 'real' or 'virtual', got {kind!r}")
