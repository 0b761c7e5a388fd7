"""Keep Python's cyclic garbage collector off the long-lived objects of a server process.

A full collection walks every tracked container. In a serving process most of them live as
long as the process: the app, its modules, the store's containers. The memory store's hold
every task and job, and with millions of entries a walk over them stalls the event loop
(measured, memory store, wrk -c32: p99 19 ms with them walked, 4 ms without).

`settle()` collects once and then freezes what is alive (gc.freeze): the frozen objects are
never walked again. They are still freed by reference counting as usual; only a reference
cycle among them would never be collected. It runs when a worker's app is built, and again
after a reset, which replaces the store's containers.
"""

from __future__ import annotations

import gc


def settle() -> None:
    gc.collect()
    gc.freeze()


M_ARENA_MAX = -8  # glibc's mallopt(3) parameter


def limit_arenas(arenas: int = 2) -> bool:
    """At most `arenas` malloc arenas for this process's threads (glibc; elsewhere nothing).
    Threads that each load a task of a 1 MiB body leave each their own arena holding freed
    pages. Measured, the scheduler process after 40 such covers (stages 0.5/1/1.5 s): 97 MiB
    with glibc's default (8 arenas per core), 83 MiB with 2; a longer run levelled off at about
    230 MiB against 110 (MALLOC_ARENA_MAX=2). Call before the threads start. False if not applied."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
