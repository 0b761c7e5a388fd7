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
        self._lock = threading.RLock()  # one advance at a time
        self._set = threading.Lock()  # _now only goes up, whoever moves it
        self.listeners: list = []

    def now(self) -> float:
        return self._now

    def observe(self, t: float) -> None:
        """Another process sharing the store advanced the clock to `t`: catch up (never back)."""
        if t > self._now:
            self._raise_to(t)

    def adopt(self, t: float) -> None:
        """Take the shared clock's time as it is (at start, before anything ran on this one)."""
        with self._set:
            self._now = t

    def _raise_to(self, t: float) -> None:
        with self._set:
            if t > self._now:
                self._now = t

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
                self._raise_to(due)
                self.listeners[index].run_due()
            self._raise_to(target)
            return self._now


def make_clock(kind: str):
    if kind == "virtual":
        return VirtualClock()
    if kind == "real":
        return RealClock()
    raise ValueError(f"clock must be 'real' or 'virtual', got {kind!r}")
