"""SQLite store: one file shared by every worker process of a machine (or ":memory:" for one process).

How the atomicity promises of `base.Store` hold across threads AND processes:
- the file is in WAL mode, so readers never wait for the writer;
- every write runs inside `BEGIN IMMEDIATE`: the write lock is taken before anything is read,
  so no two claimants can read the same free row, balance or rate window; a writer of another
  process is waited for (in short steps: SQLite's own busy handler first sleeps a millisecond);
- `synchronous=NORMAL`: a committed transaction survives the process being killed (SIGKILL);
  only a power cut may lose the last few, which a fake can live with. Every verb returns after
  its transaction committed: what was acknowledged is on disk.

Group commit: the writes of one process's threads queue up; whichever thread finds no writer
running becomes the leader, runs every queued write in one transaction (each inside its own
savepoint, so one failing write does not undo the others) and commits once. Under load a commit
(the expensive part: locks, WAL frames) is shared by many writes; alone, a write is committed
at once. Checkpoints (copying the WAL into the file, with fsyncs) run in a background thread,
not in the request that happens to cross the WAL limit.

Connections: a small pool for readers, one connection per concurrently reading thread, created
lazily. A process that was forked with open connections drops them and opens its own.
":memory:" is one connection behind a lock (an in-memory database cannot be shared).

Records are JSON (orjson) in a `data` column; the fields that are searched or ordered on
(due time, expiry, key, status) are columns with indexes.

The prelude (what every API request reads first: the key's account, the settings, the armed
fault kinds) is cached per process. They change rarely, and only through this class's verbs,
which after committing write a new random stamp into a small file shared by every process
(`<file>-gen`, mapped in memory; for ":memory:" a stamp in the process). A cached prelude is
used while the stamp is the one it was read under, and for at most PRELUDE_TTL seconds (a
writer that died between its commit and its stamp, or one that does not stamp). Credits are
not part of it: `get_account` reads them. If the stamp file cannot be opened (left behind by
another user, say), nothing is cached.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager

import orjson

from .base import Store

BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction before failing
# Seconds between background WAL checkpoints. A short WAL is cheaper to commit to: measured with
# one worker under wrk -c32 (POST upload-cover, A/B runs alternated), 0.05 s against 0.25 s gave
# 7-15 % more requests per second, p99 10 ms instead of 21, and less CPU per request; an idle
# checkpoint costs next to nothing.
CHECKPOINT_EVERY = 0.05
AUTOCHECKPOINT_PAGES = 4000  # backstop (16 MB of WAL), should the background checkpoints fall behind
MAX_BATCH = 256  # writes per group commit
PRELUDE_TTL = 1.0  # seconds a cached prelude is trusted at most, even with an unchanged stamp
PRELUDE_CACHE_KEYS = 4096  # cached preludes per process (the cache is emptied when full)

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
CREATE TABLE IF NOT EXISTS log_chunks (
    seq INTEGER PRIMARY KEY, journal TEXT NOT NULL, last INTEGER NOT NULL, count INTEGER NOT NULL,
    keep INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS log_chunks_last ON log_chunks (journal, last);
CREATE TABLE IF NOT EXISTS faults (
    seq INTEGER PRIMARY KEY, kind TEXT, key TEXT, count INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS faults_kind ON faults (kind, seq);
CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v BLOB NOT NULL);
"""

CHARGE_SQL = "UPDATE accounts SET credits = credits - ?1 WHERE key = ?2 AND credits >= ?1 RETURNING credits"
PUT_TASK_SQL = ("INSERT INTO tasks (id, key, status, expires_at, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET key = excluded.key, status = excluded.status, "
                "expires_at = excluded.expires_at, data = excluded.data")
ADD_JOB_SQL = ("INSERT OR REPLACE INTO jobs (id, task_id, due, owner, lease_until, avail, data) "
               "VALUES (?, ?, ?, NULL, NULL, ?, ?)")

PRELUDE_SQL = ("SELECT 0, credits, hmac_key FROM accounts WHERE key = ?1 "
               "UNION ALL SELECT 1, k, v FROM settings "
               "UNION ALL SELECT DISTINCT 2, kind, NULL FROM faults WHERE key IN ('*', ?1)")

_dumps = orjson.dumps
_loads = orjson.loads
_monotonic = time.monotonic  # the prelude cache's clock (tests move it)
_FORK_LOCK = threading.Lock()
os.register_at_fork(after_in_child=lambda: globals().__setitem__("_FORK_LOCK", threading.Lock()))

# Held by checkpoint threads while they are inside SQLite, and by fork() for its duration: a
# child never inherits a SQLite mutex held by a checkpoint thread (which does not exist in the
# child: its first open would wait forever). Only the checkpoint threads are covered: a process
# must not fork while another of its threads uses the store (the server closes the store it
# seeded, joining its checkpoint thread, before granian forks the workers).
if "_CHECKPOINT_GATE" not in globals():  # once, even if the module is reloaded
    _CHECKPOINT_GATE = threading.Lock()

    def _gate_before_fork() -> None:
        _CHECKPOINT_GATE.acquire()

    def _gate_after_fork_in_parent() -> None:
        _CHECKPOINT_GATE.release()

    def _gate_after_fork_in_child() -> None:
        globals()["_CHECKPOINT_GATE"] = threading.Lock()

    os.register_at_fork(before=_gate_before_fork, after_in_parent=_gate_after_fork_in_parent,
                        after_in_child=_gate_after_fork_in_child)


BUSY = object()  # _try_write's answer while another writer holds the lock


def _busy(exc: sqlite3.OperationalError) -> bool:
    """The write lock is held by another connection (SQLITE_BUSY / SQLITE_LOCKED)."""
    return "locked" in str(exc) or "busy" in str(exc)


def _matches(entry: dict, match: dict) -> bool:
    return all(v is None or entry.get(k) == v for k, v in match.items())


class _Pending:
    """One queued write: the function to run inside the shared transaction, and its outcome."""

    __slots__ = ("fn", "done", "lead", "result", "error")

    def __init__(self, fn):
        self.fn, self.done, self.lead = fn, threading.Event(), False
        self.result = self.error = None


class SqliteStore(Store):
    def __init__(self, path: str = ":memory:"):
        self.path = path
        self.memory = path in (":memory:", "") or path.startswith("file::memory:")
        self._pid = os.getpid()
        self._idle: deque[sqlite3.Connection] = deque()
        self._all: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []  # kept alive, never used, after a fork
        self._lock = threading.Lock()  # guards the pool lists; the one connection for ":memory:"
        self._queue: list[_Pending] = []  # writes waiting for the next group commit
        self._qlock = threading.Lock()
        self._leading = False
        self._sweep = 0
        self._closed = threading.Event()
        self._checkpointer_pid = None
        self._checkpointer: threading.Thread | None = None
        if not self.memory and os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not self.memory:  # a new file holds API keys and HMAC keys: its owner's only (-wal, -shm
            try:             # and -gen take its permissions)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        self._preludes: dict = {}  # key -> (stamp, read at, prelude)
        conn = self._connect()
        self._retry(lambda: conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;"))
        self._retry(lambda: self._migrate(conn))
        self._stamp = self._open_stamp()
        if not self.memory:
            self._idle.append(conn)

    # -- the stamp of the cached reads --------------------------------------------------------------
    def _open_stamp(self):
        """8 bytes every process of the file sees (a shared mapping survives fork), or None
        (nothing cached) when the stamp file cannot be opened."""
        if self.memory:
            return bytearray(8)
        db = os.path.realpath(self.path)  # as SQLite names its -wal and -shm: a symlink shares them
        path = db + "-gen"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, os.stat(db).st_mode & 0o666)
            try:
                if os.fstat(fd).st_size < 8:  # real bytes, not a hole: a full disk fails here, not
                    os.pwrite(fd, bytes(8), 0)  # in a later write through the mapping (SIGBUS)
                return mmap.mmap(fd, 8)
            finally:
                os.close(fd)
        except OSError as exc:  # e.g. left by another user: the store still works, uncached
            print(f"kie-mock: {path}: {exc}; the prelude is read for every request", file=sys.stderr)
            return None

    def _changed(self) -> None:
        """After a committed change of accounts, settings or faults: every process's cached
        preludes are stale. A random stamp, not a counter: two writers never need to agree."""
        if self._stamp is not None:
            self._stamp[0:8] = os.urandom(8)

    def _write_changing(self, fn):
        """`_write` for a change of accounts, settings or faults: stamped once committed."""
        out = self._write(fn)
        self._changed()
        return out

    # -- connections -------------------------------------------------------------------------
    @staticmethod
    def _retry(fn):
        """Run fn, waiting in short steps while another process holds the write lock."""
        delay, deadline = 0.00005, None
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT
                elif now > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.002)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False,
                               cached_statements=256)
        conn.execute("PRAGMA busy_timeout = 0")  # waiting is _retry's job
        if not self.memory:
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        with self._lock:
            self._all.append(conn)
            if not self.memory and self._checkpointer_pid != os.getpid():
                self._checkpointer_pid = os.getpid()
                thread = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                          name="kie-mock-sqlite-checkpoint")
                thread.start()
                self._checkpointer = thread  # published once started: close() may join it
        return conn

    def _checkpoint_loop(self) -> None:
        pid = os.getpid()
        try:
            with _CHECKPOINT_GATE:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            while not self._closed.wait(CHECKPOINT_EVERY) and os.getpid() == pid:
                try:
                    with _CHECKPOINT_GATE:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:  # another process is checkpointing, or the file went away
                    pass
        finally:
            with _CHECKPOINT_GATE:
                conn.close()

    def _after_fork(self) -> None:
        # Only the forking thread lives on in the child, and any lock another thread held at
        # fork time stays held: start with fresh locks (guarded by a lock made in this process).
        with _FORK_LOCK:
            if self._pid == os.getpid():
                return
            if not self.memory:
                # Connections must not cross a fork: keep the inherited ones referenced (closing
                # them here could disturb the parent's locks) and open new ones when needed.
                self._inherited.extend(self._all)
                self._all, self._idle = [], deque()
            # (an in-memory database is its connection: the child keeps its own copy)
            self._lock, self._qlock = threading.Lock(), threading.Lock()
            self._queue, self._leading = [], False
            self._pid = os.getpid()

    def _take(self) -> sqlite3.Connection:
        """A connection of this process's pool, for the caller alone until `_give` (not for ":memory:")."""
        if self._pid != os.getpid():
            self._after_fork()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connect()

    def _give(self, conn: sqlite3.Connection) -> None:
        self._idle.append(conn)

    @contextmanager
    def _conn(self):
        if self.memory:
            if self._pid != os.getpid():
                self._after_fork()
            with self._lock:
                yield self._all[0]
            return
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    def _read(self, sql: str, args=(), one: bool = False):
        # The hot path of every request (the prelude, record-info's task): no generator context
        # manager, and the retry loop entered only when the file is busy (a WAL reader rarely is).
        if self.memory:
            with self._conn() as conn:
                cur = conn.execute(sql, args)
                return cur.fetchone() if one else cur.fetchall()
        conn = self._take()
        try:
            try:
                cur = conn.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                cur = self._retry(lambda: conn.execute(sql, args))
            try:
                return cur.fetchone() if one else cur.fetchall()
            finally:
                cur.close()  # no read snapshot goes back to the pool, even if fetching raised
        finally:
            self._give(conn)

    def _read_one(self, sql: str, args=()):
        return self._read(sql, args, one=True)

    def _write(self, fn):
        """Run fn(conn) in a write transaction (shared with the other writes queued meanwhile);
        its result once committed."""
        if self._pid != os.getpid():
            self._after_fork()
        mine = _Pending(fn)
        with self._qlock:
            self._queue.append(mine)
            lead = not self._leading
            if lead:
                self._leading = True
        if lead:
            self._commit_batch()  # mine is first in the queue: committed when this returns
        else:
            mine.done.wait()
            if mine.lead:  # handed the leadership: mine is first in the queue now
                self._commit_batch()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _commit_batch(self) -> None:
        """As leader: take the queued writes, run them in one transaction, commit, wake their
        threads; hand the leadership to the next waiting thread, if any."""
        with self._qlock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            with self._conn() as conn:
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
                try:
                    if len(batch) == 1:
                        batch[0].result = batch[0].fn(conn)
                    else:
                        for op in batch:
                            conn.execute("SAVEPOINT op")
                            try:
                                op.result = op.fn(conn)
                            except Exception as exc:  # this write fails alone
                                conn.execute("ROLLBACK TO op")
                                op.error = exc
                            conn.execute("RELEASE op")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except BaseException as exc:  # nothing of the batch was committed
            for op in batch:
                op.result, op.error = None, exc
        with self._qlock:
            nxt = self._queue[0] if self._queue else None
            if nxt is None:
                self._leading = False
            else:
                nxt.lead = True
        for op in batch:
            if op is not nxt:
                op.done.set()
        if nxt is not None:
            nxt.done.set()

    def close(self) -> None:
        self._closed.set()
        if self.memory:  # the database is the connection: keep it usable after close()
            return
        thread = self._checkpointer
        if thread is not None and thread is not threading.current_thread() and self._checkpointer_pid == os.getpid():
            thread.join(timeout=5)  # gone before the caller forks (a server starting its workers)
        with self._lock:
            conns, self._all, self._idle = self._all, [], deque()
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def reset(self) -> None:
        def op(conn):
            for table in ("accounts", "rates", "rate_buckets", "tasks", "jobs", "log_chunks", "faults", "settings"):
                conn.execute(f"DELETE FROM {table}")
        self._write_changing(op)

    def prelude(self, key):
        """The cached prelude is shared by every caller: read it, never change it."""
        if self._stamp is None:
            return self._read_prelude(key)
        stamp, now = self._stamp[0:8], _monotonic()
        hit = self._preludes.get(key)
        if hit is not None and hit[0] == stamp and now - hit[1] < PRELUDE_TTL:
            return hit[2]
        got = self._read_prelude(key)  # read after the stamp: a change stamped meanwhile is read again
        if len(self._preludes) >= PRELUDE_CACHE_KEYS:
            self._preludes = {}
        self._preludes[key] = (stamp, now, got)
        return got

    def _read_prelude(self, key):
        account, settings, armed = None, {}, set()
        for what, a, b in self._read(PRELUDE_SQL, (key,)):
            if what == 0:
                account = {"key": key, "credits": a, "hmac_key": b}
            elif what == 1:
                settings[a] = _loads(b)
            else:
                armed.add(a)
        if account is None:
            return None, {}, frozenset()
        return account, settings, frozenset(armed)

    # -- accounts ----------------------------------------------------------------------------
    def put_account(self, key, credits, hmac_key=None):
        self._write_changing(lambda c: c.execute(
            "INSERT INTO accounts (key, credits, hmac_key, seq) VALUES (?, ?, ?, "
            " (SELECT COALESCE(MAX(seq), 0) + 1 FROM accounts)) "
            "ON CONFLICT (key) DO UPDATE SET credits = excluded.credits, hmac_key = excluded.hmac_key",
            (key, int(credits), hmac_key)))

    def get_account(self, key):
        row = self._read_one("SELECT credits, hmac_key FROM accounts WHERE key = ?", (key,))
        return {"key": key, "credits": row[0], "hmac_key": row[1]} if row else None

    def delete_account(self, key):
        return self._write_changing(lambda c: c.execute("DELETE FROM accounts WHERE key = ?", (key,)).rowcount) > 0

    def list_accounts(self):
        return [{"key": k, "credits": c, "hmac_key": h}
                for k, c, h in self._read("SELECT key, credits, hmac_key FROM accounts ORDER BY seq")]

    def charge(self, key, amount):
        row = self._write(lambda c: c.execute(CHARGE_SQL, (int(amount), key)).fetchone())
        return row[0] if row else None

    def refund(self, key, amount):
        row = self._write(lambda c: c.execute(
            "UPDATE accounts SET credits = credits + ? WHERE key = ? RETURNING credits", (int(amount), key)).fetchone())
        return row[0] if row else None

    # -- rate windows ------------------------------------------------------------------------
    def rate_acquire(self, bucket, now, limit, window):
        return self._write(self._rate_op(bucket, now, limit, window))

    def _rate_op(self, bucket, now, limit, window):
        # rates: one row per admitted entry; rate_buckets: their count per bucket (COUNT(*) would
        # walk the whole window) and the latest expiry, so whole idle buckets can be swept.
        def op(conn):
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
        return op

    def rate_release(self, bucket, token):
        def op(conn):
            if conn.execute("DELETE FROM rates WHERE token = ? AND bucket = ?", (token, bucket)).rowcount:
                conn.execute("UPDATE rate_buckets SET n = n - 1 WHERE bucket = ?", (bucket,))
        self._write(op)

    # -- tasks ------------------------------------------------------------------------------
    @staticmethod
    def _task_row(task):
        return task["taskId"], task.get("key"), task.get("status"), task.get("expires_at"), _dumps(task)

    @staticmethod
    def _job_row(job):
        job = dict(job, owner=None, lease_until=None)
        return job["id"], job.get("task_id"), job["due"], job["due"], _dumps(job)

    def put_task(self, task):
        args = self._task_row(task)
        self._write(lambda c: c.execute(PUT_TASK_SQL, args))

    def accept(self, key, cost, task, job):
        task_row, job_row = self._task_row(task), self._job_row(job)

        def op(conn):
            row = conn.execute(CHARGE_SQL, (int(cost), key)).fetchone()
            if row is None:
                return None
            conn.execute(PUT_TASK_SQL, task_row)
            conn.execute(ADD_JOB_SQL, job_row)
            return row[0]
        return self._write(op)

    def _accept_rows(self, items) -> list:
        rows = []  # per item its rows, or the exception building them raised
        for key, cost, task, job in items:
            try:
                rows.append((int(cost), key, self._task_row(task), self._job_row(job)))
            except Exception as exc:
                rows.append(exc)
        return rows

    @staticmethod
    def _accept_op(rows):
        """The transaction body of accept_many: per key one charge for all its items when the
        balance covers them (else one charge per item, in order), then every task and every job
        in one statement each."""
        def op(conn):
            out: list = [None] * len(rows)
            by_key: dict = {}
            for i, item in enumerate(rows):
                if isinstance(item, Exception):
                    out[i] = item
                else:
                    by_key.setdefault(item[1], []).append(i)
            for key, idx in by_key.items():
                total = sum(rows[i][0] for i in idx)
                grouped = len(idx) > 1 and all(rows[i][0] >= 0 for i in idx)
                row = conn.execute(CHARGE_SQL, (total, key)).fetchone() if grouped else None
                if row is not None:  # all of them fit: item i leaves the balance its successors took from
                    left = row[0] + total
                    for i in idx:
                        left -= rows[i][0]
                        out[i] = left
                    continue
                for i in idx:
                    row = conn.execute(CHARGE_SQL, (rows[i][0], key)).fetchone()
                    out[i] = None if row is None else row[0]
            accepted = [rows[i] for i, o in enumerate(out) if type(o) is int]
            if accepted:
                conn.executemany(PUT_TASK_SQL, [r[2] for r in accepted])
                conn.executemany(ADD_JOB_SQL, [r[3] for r in accepted])
            return out
        return op

    def accept_many(self, items):
        try:
            return self._write(self._accept_op(self._accept_rows(items)))  # one transaction for all
        except Exception as exc:  # nothing of it was stored
            return self._one_by_one(items, exc)

    def _one_by_one(self, items, exc: Exception) -> list:
        """After the batch's transaction failed: each item on its own, so one bad row does not
        fail the others; but a lock that stayed held (or a lost file) fails them all at once,
        instead of each waiting out the lock again."""
        if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
            return [exc] * len(items)
        return super().accept_many(items)

    def _try_write(self, op):
        """op(conn) in a transaction of its own, outside the group commit of this process's
        threads; BUSY at once (nothing done) while anyone else holds the write lock (another
        process, or a thread of this one). An exception of op or of the commit is raised, with
        nothing of it stored."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._conn() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    return BUSY
                raise
            try:
                out = op(conn)
                conn.execute("COMMIT")
                return out
            finally:  # never back to the pool inside a transaction (KeyboardInterrupt included)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def try_accept_many(self, items):
        try:
            out = self._try_write(self._accept_op(self._accept_rows(items)))
        except Exception as exc:
            return self._one_by_one(items, exc)  # nothing of it was stored
        return None if out is BUSY else out

    def try_rate_acquire(self, bucket, now, limit, window):
        out = self._try_write(self._rate_op(bucket, now, limit, window))
        return None if out is BUSY else out

    def get_task(self, task_id):
        row = self._read_one("SELECT data FROM tasks WHERE id = ?", (task_id,))
        return _loads(row[0]) if row else None

    def update_task(self, task_id, changes):
        return self._update_task(task_id, changes, None)

    def refund_task(self, task_id, changes, amount):
        return self._update_task(task_id, changes, int(amount))

    def _update_task(self, task_id, changes, refund: int | None):
        def op(conn):
            row = conn.execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            task = _loads(row[0])
            if refund is not None and not task.get("refunded"):
                conn.execute("UPDATE accounts SET credits = credits + ? WHERE key = ?", (refund, task.get("key")))
                task["refunded"] = True
            task.update(changes)
            data = _dumps(task)
            conn.execute("UPDATE tasks SET key = ?, status = ?, expires_at = ?, data = ? WHERE id = ?",
                         (task.get("key"), task.get("status"), task.get("expires_at"), data, task_id))
            return data
        data = self._write(op)
        return None if data is None else _loads(data)  # a copy that shares nothing with `changes`

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
        return [_loads(r[0]) for r in self._read(sql, args)]

    def purge_tasks(self, before):
        return self._write(lambda c: c.execute("DELETE FROM tasks WHERE expires_at <= ?", (before,)).rowcount)

    # -- jobs -------------------------------------------------------------------------------
    @staticmethod
    def _job(row) -> dict:
        job_id, task_id, due, owner, lease_until, data = row
        job = _loads(data)
        job.update(id=job_id, task_id=task_id, due=due, owner=owner, lease_until=lease_until)
        return job

    def add_job(self, job):
        args = self._job_row(job)
        self._write(lambda c: c.execute(ADD_JOB_SQL, args))

    def claim_due(self, now, owner, lease, limit=100):
        # Cheap read first (no write lock) so idle schedulers polling the file do not contend.
        if self._read_one("SELECT 1 FROM jobs WHERE avail <= ? LIMIT 1", (now,)) is None:
            return []
        until = now + lease
        rows = self._write(lambda c: c.execute(
            "UPDATE jobs SET owner = ?1, lease_until = ?2, avail = ?2 WHERE id IN "
            " (SELECT id FROM jobs WHERE avail <= ?3 ORDER BY avail LIMIT ?4) "
            "RETURNING id, task_id, due, owner, lease_until, data", (owner, until, now, int(limit))).fetchall())
        jobs = [self._job(r) for r in rows]
        jobs.sort(key=lambda j: j["due"])
        return jobs

    def finish_job(self, job_id):
        self._write(lambda c: c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    def next_due(self):
        row = self._read_one("SELECT MIN(avail) FROM jobs")
        return row[0] if row else None

    def list_jobs(self, task_id=None):
        sql = "SELECT id, task_id, due, owner, lease_until, data FROM jobs"
        args = ()
        if task_id is not None:
            sql += " WHERE task_id = ?"
            args = (task_id,)
        return [self._job(r) for r in self._read(sql + " ORDER BY due", args)]

    def reschedule_jobs(self, task_id, due):
        return self._write(lambda c: c.execute(
            "UPDATE jobs SET due = ?1, avail = ?1 WHERE task_id = ?2 AND owner IS NULL AND due > ?1",
            (due, task_id)).rowcount)

    # -- journals -----------------------------------------------------------------------------
    def log(self, journal, entry, limit):
        self.log_many(journal, [entry], limit)

    # A journal is stored in chunks: each log_many call is one row holding its entries (a JSON
    # array), numbered by `last` (the number of its newest entry) and `count`; `keep` is the bound
    # it was written with. Whole chunks older than the bound are deleted; read_log skips the
    # entries of a straddling chunk that fall outside it. One row per flush instead of one per
    # entry: the request journal of a busy server costs a few microseconds per request less.
    def log_many(self, journal, entries, limit):
        if entries:
            self._write(self._log_op(journal, entries, limit))

    def try_log_many(self, journal, entries, limit):
        return not entries or self._try_write(self._log_op(journal, entries, limit)) is not BUSY

    @staticmethod
    def _log_op(journal, entries, limit):
        data, count, keep = _dumps(entries), len(entries), max(int(limit), 0)

        def op(conn):
            (last,) = conn.execute("SELECT COALESCE(MAX(last), 0) FROM log_chunks WHERE journal = ?",
                                   (journal,)).fetchone()
            last += count
            conn.execute("INSERT INTO log_chunks (journal, last, count, keep, data) VALUES (?, ?, ?, ?, ?)",
                         (journal, last, count, keep, data))
            conn.execute("DELETE FROM log_chunks WHERE journal = ? AND last <= ?", (journal, last - keep))
        return op

    def read_log(self, journal, limit=100, **match):
        match = {k: v for k, v in match.items() if v is not None}
        out: list = []
        with self._conn() as conn:
            # entries numbered up to `floor` are outside the bound (the strictest any write had:
            # an entry once dropped stays dropped, should a later run keep more)
            (floor,) = conn.execute("SELECT MAX(last - keep) FROM log_chunks WHERE journal = ?", (journal,)).fetchone()
            cur = conn.execute("SELECT last, count, data FROM log_chunks WHERE journal = ? ORDER BY last DESC",
                               (journal,))
            for last, count, data in cur:
                entries = _loads(data)
                first = last - count + 1
                for i in range(count - 1, -1, -1):
                    if first + i <= floor or len(out) >= limit:
                        break
                    if _matches(entries[i], match):
                        out.append(entries[i])
                if first <= floor or len(out) >= limit:
                    break
            cur.close()
        return out

    @staticmethod
    def _migrate(conn) -> None:
        """Stores written by earlier versions kept one journal row per entry (table `logs`):
        each journal becomes one chunk, once."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'logs'").fetchone() is None:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'logs'").fetchone():
                for (journal,) in conn.execute("SELECT DISTINCT journal FROM logs").fetchall():
                    rows = conn.execute("SELECT n, data FROM logs WHERE journal = ? ORDER BY n", (journal,)).fetchall()
                    conn.execute("INSERT INTO log_chunks (journal, last, count, keep, data) VALUES (?, ?, ?, ?, ?)",
                                 (journal, rows[-1][0], len(rows), len(rows), _dumps([_loads(d) for _, d in rows])))
                conn.execute("DROP TABLE logs")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- faults ---------------------------------------------------------------------------------
    def arm_fault(self, fault):
        args = (fault.get("kind"), fault.get("key", "*"), int(fault.get("count", 1)), _dumps(fault))
        self._write_changing(lambda c: c.execute(
            "INSERT INTO faults (kind, key, count, data) VALUES (?, ?, ?, ?)", args))

    def take_fault(self, key, kind):
        # Nearly every request asks; nearly always nothing is armed: answer that without the write lock.
        if self._read_one("SELECT 1 FROM faults WHERE kind = ? AND key IN ('*', ?) LIMIT 1", (kind, key)) is None:
            return None

        def op(conn):
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
            return count, data
        got = self._write(op)
        if got is None:
            return None
        if got[0] <= 0:  # the last use: the kind may not be armed any more
            self._changed()
        fault = _loads(got[1])
        fault["count"] = got[0]
        return fault

    def list_faults(self):
        out = []
        for count, data in self._read("SELECT count, data FROM faults ORDER BY seq"):
            fault = _loads(data)
            fault["count"] = count
            out.append(fault)
        return out

    def clear_faults(self):
        self._write_changing(lambda c: c.execute("DELETE FROM faults"))

    # -- settings ---------------------------------------------------------------------------------
    def get_settings(self):
        return {k: _loads(v) for k, v in self._read("SELECT k, v FROM settings")}

    def update_settings(self, changes):
        rows_in = [(k, _dumps(v)) for k, v in changes.items()]

        def op(conn):
            conn.executemany("INSERT INTO settings (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                             rows_in)
            return conn.execute("SELECT k, v FROM settings").fetchall()
        return {k: _loads(v) for k, v in self._write_changing(op)}

    def claim_setting(self, name, value):
        row = (name, _dumps(value))
        return self._write_changing(
            lambda c: c.execute("INSERT INTO settings (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", row).rowcount == 1)

    def raise_setting(self, name, value):
        def op(conn):
            row = conn.execute("SELECT v FROM settings WHERE k = ?", (name,)).fetchone()
            current = _loads(row[0]) if row else None
            if current is None or value > current:
                conn.execute("INSERT INTO settings (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                             (name, _dumps(value)))
                current = value
            return current
        return self._write_changing(op)
