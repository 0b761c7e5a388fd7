"""The store interface: every piece of state the fake keeps, and the atomic verbs on it.

Records are plain JSON-able dicts so every backend stores them the same way.
Atomicity promises (every backend keeps them, across threads and processes):
- `charge` never lets a balance go negative;
- `rate_acquire` admits at most `limit` entries per sliding window;
- `claim_due` hands a due job to one claimant until its lease runs out;
- `take_fault` consumes each armed count once;
- `accept` charges, stores the task and schedules its first job all together, or not at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Store(ABC):
    # -- what every API request reads first -------------------------------------
    def prelude(self, key: str) -> tuple[dict | None, dict, frozenset]:
        """(the key's account or None, the settings, the kinds of fault armed for the key or for
        everyone): one read where the backend allows it. A backend may answer from a cache kept
        fresh for these three; the account's credits are then not current (`get_account` is)."""
        account = self.get_account(key)
        if account is None:
            return None, {}, frozenset()
        armed = frozenset(f.get("kind") for f in self.list_faults() if f.get("key", "*") in ("*", key))
        return account, self.get_settings(), armed

    # -- accounts (per API key) -------------------------------------------------
    @abstractmethod
    def put_account(self, key: str, credits: int, hmac_key: str | None = None) -> None: ...

    @abstractmethod
    def get_account(self, key: str) -> dict | None:
        """{"key", "credits", "hmac_key"} or None for an unknown key."""

    @abstractmethod
    def delete_account(self, key: str) -> bool: ...

    @abstractmethod
    def list_accounts(self) -> list[dict]: ...

    @abstractmethod
    def charge(self, key: str, amount: int) -> int | None:
        """Take `amount` credits; the new balance, or None (nothing taken) when short."""

    @abstractmethod
    def refund(self, key: str, amount: int) -> int | None: ...

    # -- rate windows --------------------------------------------------------------
    @abstractmethod
    def rate_acquire(self, bucket: str, now: float, limit: int, window: float) -> tuple[bool, float, str]:
        """(admitted, seconds until a slot frees, token). The token undoes it with rate_release."""

    def try_rate_acquire(self, bucket: str, now: float, limit: int, window: float) -> tuple[bool, float, str] | None:
        """`rate_acquire`, or None (nothing done) if it would have to wait for another writer:
        for an event loop, which then hands the request to a thread. Backends that never wait
        for a lock just answer."""
        return self.rate_acquire(bucket, now, limit, window)

    @abstractmethod
    def rate_release(self, bucket: str, token: str) -> None: ...

    # -- tasks ----------------------------------------------------------------------
    @abstractmethod
    def put_task(self, task: dict) -> None: ...

    @abstractmethod
    def get_task(self, task_id: str) -> dict | None: ...

    @abstractmethod
    def update_task(self, task_id: str, changes: dict) -> dict | None:
        """Merge `changes` into the task; the updated task (None if unknown)."""

    @abstractmethod
    def refund_task(self, task_id: str, changes: dict, amount: int) -> dict | None:
        """`update_task`, and unless the stored task says `refunded`: give `amount` credits back to
        the task's key (if it still has an account) and set `refunded`, all in one atomic step (a
        stage job run again after its process died between a refund and the task's update gave the
        credits back twice). The updated task (None if unknown: nothing refunded)."""

    @abstractmethod
    def accept(self, key: str, cost: int, task: dict, job: dict) -> int | None:
        """Take `cost` credits from `key` and, only if the balance allows it, store `task` and add
        `job` (its first scheduled job), in one atomic step: the new balance, or None (nothing
        done) when short. A crash never leaves a charge without its task or a task without its job."""

    def accept_many(self, items: list[tuple]) -> list:
        """`accept` for each (key, cost, task, job), in order, each atomic on its own (backends
        write them together): per item its result, or the exception it raised."""
        out = []
        for item in items:
            try:
                out.append(self.accept(*item))
            except Exception as exc:
                out.append(exc)
        return out

    def try_accept_many(self, items: list[tuple]) -> list | None:
        """`accept_many`, or None (nothing done) if it would have to wait for another writer
        (another process holds the write lock): for callers that have better things to do than
        wait (an event loop). Backends that never wait for a lock just write."""
        return self.accept_many(items)

    @abstractmethod
    def list_tasks(self, key: str | None = None, status: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first."""

    @abstractmethod
    def purge_tasks(self, before: float) -> int:
        """Delete tasks whose expires_at <= before; how many."""

    # -- scheduled jobs (stage transitions and callback attempts) -------------------
    @abstractmethod
    def add_job(self, job: dict) -> None:
        """job: {"id", "task_id", "stage", "attempt", "due", ...}."""

    @abstractmethod
    def claim_due(self, now: float, owner: str, lease: float, limit: int = 100) -> list[dict]:
        """Jobs due at `now` that nobody holds (or whose lease ran out), leased to `owner`."""

    @abstractmethod
    def finish_job(self, job_id: str) -> None: ...

    @abstractmethod
    def next_due(self) -> float | None: ...

    @abstractmethod
    def list_jobs(self, task_id: str | None = None) -> list[dict]: ...

    @abstractmethod
    def reschedule_jobs(self, task_id: str, due: float) -> int:
        """Make a task's pending jobs due at `due` (fire now); how many."""

    # -- journals (bounded: the oldest entries are dropped) ---------------------------
    @abstractmethod
    def log(self, journal: str, entry: dict, limit: int) -> None:
        """journal: "attempts" (callback deliveries) or "requests" (received API calls)."""

    def log_many(self, journal: str, entries: list[dict], limit: int) -> None:
        """Append several entries, oldest first (backends write them in one go)."""
        for entry in entries:
            self.log(journal, entry, limit)

    def try_log_many(self, journal: str, entries: list[dict], limit: int) -> bool:
        """log_many without waiting for a write lock held elsewhere: False (nothing written)
        while one is. Backends without such a lock just write."""
        self.log_many(journal, entries, limit)
        return True

    @abstractmethod
    def read_log(self, journal: str, limit: int = 100, **match) -> list[dict]:
        """Newest first; entries whose fields equal every `match` value."""

    # -- armed faults -------------------------------------------------------------------
    @abstractmethod
    def arm_fault(self, fault: dict) -> None:
        """fault: {"id", "key" (or "*"), "count", ...}: applies to the next `count` requests."""

    @abstractmethod
    def take_fault(self, key: str, kind: str) -> dict | None:
        """Consume one use of the oldest fault of `kind` armed for `key` (or "*")."""

    @abstractmethod
    def list_faults(self) -> list[dict]: ...

    @abstractmethod
    def clear_faults(self) -> None: ...

    # -- shared settings (maintenance, limits changed at run time) ----------------------------
    @abstractmethod
    def get_settings(self) -> dict: ...

    @abstractmethod
    def update_settings(self, changes: dict) -> dict: ...

    @abstractmethod
    def claim_setting(self, name: str, value) -> bool:
        """Set `name` only if it is not set: True for the one caller that set it (atomic)."""

    @abstractmethod
    def raise_setting(self, name: str, value: float) -> float:
        """Set the number `name` to `value` unless it is larger already; the value it has (atomic)."""

    # -- everything -------------------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Forget every account, task, job, journal entry, fault and setting."""

    def close(self) -> None:
        pass
