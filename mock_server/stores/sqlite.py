"""SQLite store: one file shared by every worker process of a machine (or ":memory:" for one process).

How the atomicity promises of `base.Store` hold across threads AND processes:
- the file is in WAL mode, so readers never wait for the writer;
- every read-modify-write is either one SQL statement (an autocommit UPDATE takes the write
  lock before it reads) or runs inside `BEGIN IMMEDIATE` (the write lock is taken first, so no
  two claimants can read the same "free" row); a busy writer is waited for (busy_timeout);
- `synchronous=NORMAL`: a committed transaction survives the process being killed (SIGKILL);
  only a power cut may lose the last few, which a fake can live with.

Connections: a small pool, one connection per concurrently running thread, created lazily
(a thread never shares a connection with another at the same time). A process that was forked
with an open pool drops the inherited connections and opens its own. ":memory:" is one
connection behind a lock (an in-memory database cannot be shared between connections).

Records are JSON (orjson) in a `data` column; the fields that are searched or ordered on
(due time, expiry, key, status) are columns with indexes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager

import orjson

from .base import Store

BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key TEXT PRIMARY KEY, credits INTEGER NOT NULL, hmac_key TEXT, seq INTEGER);
CREATE TABLE IF NOT EXISTS rates (
    token TEXT PRIMARY KEY, bucket TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rates_bucket ON rates (bucket, expires);
CREATE TABLE IF NOT EXISTS rate_buckets (
    bucket TEXT PRIMARY KEY, n INTEGER NOT NULL, last REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_buckets_last ON rate_buckets (last);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, key TEXT, status TEXT,
    expires_at REAL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_expires ON tasks (expires_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, task_id TEXT, due REAL NOT NULL, owner TEXT, lease_until REAL,
    avail REAL NOT NULL, data BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_avail ON jobs (avail);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task_id);
CREATE TABLE IF NOT EXISTS logs (
    journal TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (journal, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS faults (
    seq INTEGER PRIMARY KEY, kind TEXT, key TEXT, count INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS faults_kind ON faults (kind, seq);
CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v BLOB NOT NULL);
"""

_dumps = orjson.dumps
_loads = orjson.loads


def _matches(entry: dict, match: dict) -> bool:
    return all(v is None or entry.get(k) == v for k, v in match.items())


class SqliteStore(Store):
    def __init__(self, path: str = ":memory:"):
        self.path = path
        self.memory = path in (":memory:", "") or path.startswith("file::memory:")
        self._pid = os.getpid()
        self._idle: deque[sqlite3.Connection] = deque()
        self._all: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []  # kept alive, never used, after a fork
        self._lock = threading.Lock()  # guards the pool lists; the one connection for ":memory:"
        self._sweep = 0
        if not self.memory and os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        conn = self._connect()
        self._retry(lambda: conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;"))
        self._idle.append(conn)

    # -- connections -------------------------------------------------------------------------
    def _retry(self, fn):
        """Run fn, retrying "database is locked" at open time (the busy handler covers the rest)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self.memory:
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._lock:
            self._all.append(conn)
        return conn

    def _after_fork(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # Connections must not cross a fork: keep the inherited ones referenced (closing them
            # here could disturb the parent's locks) and start a fresh pool.
            self._inherited.extend(self._all)
            self._all = []
            self._idle = deque()
            self._pid = os.getpid()

    @contextmanager
    def _conn(self):
        if self.memory:
            with self._lock:
                yield self._all[0]
            return
        if self._pid != os.getpid():
            self._after_fork()
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._connect()
        try:
            yield conn
        finally:
            idle.append(conn)

    @contextmanager
    def _write(self):
        """A write transaction that holds the database's write lock from its first statement."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _one(self, sql: str, args=()):
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()

    def _all_rows(self, sql: str, args=()):
        with self._conn() as conn:
            return conn.execute(sql, args).fetchall()

    def _exec(self, sql: str, args=()) -> int:
        with self._conn() as conn:
            return conn.execute(sql, args).rowcount

    def close(self) -> None:
        with self._lock:
            conns, self._all, self._idle = self._all, [], deque()
        if self.memory:  # the database is the connection: keep it usable after close()
            with self._lock:
                self._all = conns
            return
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def reset(self) -> None:
        with self._write() as conn:
            for table in ("accounts", "rates", "rate_buckets", "tasks", "jobs", "logs", "faults", "settings"):
                conn.execute(f"DELETE FROM {table}")

    # -- accounts ----------------------------------------------------------------------------
    def put_account(self, key, credits, hmac_key=None):
        self._exec("INSERT INTO accounts (key, credits, hmac_key, seq) VALUES (?, ?, ?, "
                   " (SELECT COALESCE(MAX(seq), 0) + 1 FROM accounts)) "
                   "ON CONFLICT (key) DO UPDATE SET credits = excluded.credits, hmac_key = excluded.hmac_key",
                   (key, int(credits), hmac_key))

    def get_account(self, key):
        row = self._one("SELECT credits, hmac_key FROM accounts WHERE key = ?", (key,))
        return {"key": key, "credits": row[0], "hmac_key": row[1]} if row else None

    def delete_account(self, key):
        return self._exec("DELETE FROM accounts WHERE key = ?", (key,)) > 0

    def list_accounts(self):
        return [{"key": k, "credits": c, "hmac_key": h}
                for k, c, h in self._all_rows("SELECT key, credits, hmac_key FROM accounts ORDER BY seq")]

    def charge(self, key, amount):
        # One statement: the write lock is taken before the balance is read.
        row = self._one("UPDATE accounts SET credits = credits - ?1 WHERE key = ?2 AND credits >= ?1 "
                        "RETURNING credits", (int(amount), key))
        return row[0] if row else None

    def refund(self, key, amount):
        row = self._one("UPDATE accounts SET credits = credits + ? WHERE key = ? RETURNING credits",
                        (int(amount), key))
        return row[0] if row else None

    # -- rate windows ------------------------------------------------------------------------
    def rate_acquire(self, bucket, now, limit, window):
        # rates: one row per admitted entry; rate_buckets: their count per bucket (COUNT(*) would
        # walk the whole window) and the latest expiry, so whole idle buckets can be swept.
        with self._write() as conn:
            gone = conn.execute("DELETE FROM rates WHERE bucket = ? AND expires <= ?", (bucket, now)).rowcount
            row = conn.execute("SELECT n FROM rate_buckets WHERE bucket = ?", (bucket,)).fetchone()
            n = (row[0] if row else 0) - gone
            if n >= limit:
                if gone:
                    conn.execute("UPDATE rate_buckets SET n = ? WHERE bucket = ?", (n, bucket))
                (first,) = conn.execute("SELECT MIN(expires) FROM rates WHERE bucket = ?", (bucket,)).fetchone()
                return False, max(first - now, 0.0) if first is not None else 0.0, ""
            token = uuid.uuid4().hex
            expires = now + window
            conn.execute("INSERT INTO rates (token, bucket, at, expires) VALUES (?, ?, ?, ?)",
                         (token, bucket, now, expires))
            conn.execute("INSERT INTO rate_buckets (bucket, n, last) VALUES (?1, ?2, ?3) ON CONFLICT (bucket) "
                         "DO UPDATE SET n = ?2, last = MAX(last, ?3)", (bucket, n + 1, expires))
            self._sweep += 1
            if self._sweep % 256 == 0:  # buckets nobody uses again (per-task poll limits): drop whole
                conn.execute("DELETE FROM rates WHERE bucket IN (SELECT bucket FROM rate_buckets WHERE last <= ?)",
                             (now,))
                conn.execute("DELETE FROM rate_buckets WHERE last <= ?", (now,))
        return True, 0.0, token

    def rate_release(self, bucket, token):
        with self._write() as conn:
            if conn.execute("DELETE FROM rates WHERE token = ? AND bucket = ?", (token, bucket)).rowcount:
                conn.execute("UPDATE rate_buckets SET n = n - 1 WHERE bucket = ?", (bucket,))

    # -- tasks ------------------------------------------------------------------------------
    def put_task(self, task):
        self._exec("INSERT INTO tasks (id, key, status, expires_at, data) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (id) DO UPDATE SET key = excluded.key, status = excluded.status, "
                   "expires_at = excluded.expires_at, data = excluded.data",
                   (task["taskId"], task.get("key"), task.get("status"), task.get("expires_at"), _dumps(task)))

    def get_task(self, task_id):
        row = self._one("SELECT data FROM tasks WHERE id = ?", (task_id,))
        return _loads(row[0]) if row else None

    def update_task(self, task_id, changes):
        with self._write() as conn:
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            task = _loads(row[0])
            task.update(changes)
            data = _dumps(task)
            conn.execute("UPDATE tasks SET key = ?, status = ?, expires_at = ?, data = ? WHERE id = ?",
                         (task.get("key"), task.get("status"), task.get("expires_at"), data, task_id))
        return _loads(data)  # a copy that shares nothing with `changes`

    def list_tasks(self, key=None, status=None, limit=100):
        sql, args = "SELECT data FROM tasks", []
        where = []
        if key is not None:
            where.append("key = ?")
            args.append(key)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(int(limit))
        return [_loads(r[0]) for r in self._all_rows(sql, args)]

    def purge_tasks(self, before):
        return self._exec("DELETE FROM tasks WHERE expires_at <= ?", (before,))

    # -- jobs -------------------------------------------------------------------------------
    @staticmethod
    def _job(row) -> dict:
        job_id, task_id, due, owner, lease_until, data = row
        job = _loads(data)
        job.update(id=job_id, task_id=task_id, due=due, owner=owner, lease_until=lease_until)
        return job

    def add_job(self, job):
        job = dict(job, owner=None, lease_until=None)
        self._exec("INSERT OR REPLACE INTO jobs (id, task_id, due, owner, lease_until, avail, data) "
                   "VALUES (?, ?, ?, NULL, NULL, ?, ?)",
                   (job["id"], job.get("task_id"), job["due"], job["due"], _dumps(job)))

    def claim_due(self, now, owner, lease, limit=100):
        # Cheap read first (no write lock) so idle schedulers polling the file do not contend.
        if self._one("SELECT 1 FROM jobs WHERE avail <= ? LIMIT 1", (now,)) is None:
            return []
        until = now + lease
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE jobs SET owner = ?1, lease_until = ?2, avail = ?2 WHERE id IN "
                " (SELECT id FROM jobs WHERE avail <= ?3 ORDER BY avail LIMIT ?4) "
                "RETURNING id, task_id, due, owner, lease_until, data",
                (owner, until, now, int(limit))).fetchall()
        jobs = [self._job(r) for r in rows]
        jobs.sort(key=lambda j: j["due"])
        return jobs

    def finish_job(self, job_id):
        self._exec("DELETE FROM jobs WHERE id = ?", (job_id,))

    def next_due(self):
        row = self._one("SELECT MIN(avail) FROM jobs")
        return row[0] if row else None

    def list_jobs(self, task_id=None):
        sql = "SELECT id, task_id, due, owner, lease_until, data FROM jobs"
        args = ()
        if task_id is not None:
            sql += " WHERE task_id = ?"
            args = (task_id,)
        return [self._job(r) for r in self._all_rows(sql + " ORDER BY due", args)]

    def reschedule_jobs(self, task_id, due):
        return self._exec("UPDATE jobs SET due = ?1, avail = ?1 WHERE task_id = ?2 AND owner IS NULL AND due > ?1",
                          (due, task_id))

    # -- journals -----------------------------------------------------------------------------
    def log(self, journal, entry, limit):
        data = _dumps(entry)
        with self._write() as conn:
            (n,) = conn.execute("INSERT INTO logs (journal, n, data) "
                                "SELECT ?1, COALESCE(MAX(n), 0) + 1, ?2 FROM logs WHERE journal = ?1 "
                                "RETURNING n", (journal, data)).fetchone()
            if n > limit:
                conn.execute("DELETE FROM logs WHERE journal = ? AND n <= ?", (journal, n - limit))

    def read_log(self, journal, limit=100, **match):
        match = {k: v for k, v in match.items() if v is not None}
        out = []
        with self._conn() as conn:
            cur = conn.execute("SELECT data FROM logs WHERE journal = ? ORDER BY n DESC", (journal,))
            for (data,) in cur:
                entry = _loads(data)
                if _matches(entry, match):
                    out.append(entry)
                    if len(out) >= limit:
                        break
            cur.close()
        return out

    # -- faults ---------------------------------------------------------------------------------
    def arm_fault(self, fault):
        self._exec("INSERT INTO faults (kind, key, count, data) VALUES (?, ?, ?, ?)",
                   (fault.get("kind"), fault.get("key", "*"), int(fault.get("count", 1)), _dumps(fault)))

    def take_fault(self, key, kind):
        # Nearly every request asks; nearly always nothing is armed: answer that without the write lock.
        if self._one("SELECT 1 FROM faults WHERE kind = ? AND key IN ('*', ?) LIMIT 1", (kind, key)) is None:
            return None
        with self._write() as conn:
            row = conn.execute("SELECT seq, count, data FROM faults WHERE kind = ? AND key IN ('*', ?) "
                               "ORDER BY seq LIMIT 1", (kind, key)).fetchone()
            if row is None:
                return None
            seq, count, data = row
            count -= 1
            if count <= 0:
                conn.execute("DELETE FROM faults WHERE seq = ?", (seq,))
            else:
                conn.execute("UPDATE faults SET count = ? WHERE seq = ?", (count, seq))
        fault = _loads(data)
        fault["count"] = count
        return fault

    def list_faults(self):
        out = []
        for count, data in self._all_rows("SELECT count, data FROM faults ORDER BY seq"):
            fault = _loads(data)
            fault["count"] = count
            out.append(fault)
        return out

    def clear_faults(self):
        self._exec("DELETE FROM faults")

    # -- settings ---------------------------------------------------------------------------------
    def get_settings(self):
        return {k: _loads(v) for k, v in self._all_rows("SELECT k, v FROM settings")}

    def update_settings(self, changes):
        with self._write() as conn:
            conn.executemany("INSERT INTO settings (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                             [(k, _dumps(v)) for k, v in changes.items()])
            rows = conn.execute("SELECT k, v FROM settings").fetchall()
        return {k: _loads(v) for k, v in rows}
