"""The API on an event loop, shared by both event-loop servers (httpd.py, the built-in one,
and rsgi.py, on granian): the three API endpoints run on the loop, the rest in a thread pool.

- `OnLoop.api(req, answer)` runs an API request on the loop: its response at once, WAITING (a
  cover waits for its batched store write; `answer` gets the response), or None: run it in
  the pool (`OnLoop.wsgi`). A handler that would wait for a rate window's write lock held
  elsewhere stops before it changed any state (`api.MustBlock`) and is run again in the pool;
  one with an injected latency stops likewise (`api.Delay`) and is run again on the loop once
  the latency has passed (a timer: any number of slow requests at once, no thread each); with
  the uploadUrl check on, upload-cover always runs in the pool.
- `AcceptBatcher` batches the store writes of accepted covers per turn of the loop.
"""

from __future__ import annotations

import asyncio
import functools
import io
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from . import api
from .stores import StoreLocked, networked

POOL_THREADS = 8
WAITING = object()  # OnLoop.api: the answer comes later
_monotonic = time.monotonic  # (tests replace it)


class LoopRequest(api.ApiRequest):
    """An API request an event-loop server has read whole: its headers as a mapping of lowercase
    names, and its body. The server's subclass adds where the path, query and scheme come from."""

    inline = True
    headers: dict
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def content_type(self) -> str:
        return self.headers.get("content-type") or ""

    def content_length(self) -> str | None:
        return self.headers.get("content-length")

    def raw_body(self, max_bytes: int) -> bytes:
        return self.body[:max_bytes + 1]


class OnLoop:
    """One worker's API on its event loop, and its thread pool for everything else."""

    def __init__(self, svc, wsgi_app, multiprocess: bool = False, pooled: bool | None = None):
        self.svc, self.wsgi_app, self.multiprocess = svc, wsgi_app, multiprocess
        self.limit = svc.cfg.max_body_bytes + 1  # body bytes kept: one more says "too large"
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="kie-mock-http")
        # Redis: API requests in the pool, their round trips overlap
        self.pooled = networked(svc.cfg.store) if pooled is None else pooled
        self.batcher = AcceptBatcher(svc.store)
        if self.pooled:  # the journal is written by threads: a Redis round trip must not stall the loop
            self._ticking = True
        else:
            self._journal_on_loop(svc)

    # -- the request journal, written on the loop ----------------------------------------------------
    # Another thread that writes to SQLite holds its write lock while it waits for the GIL, which
    # the loop keeps busy: the loop's next batch then finds the store locked again and again
    # (measured: one in two batches). So the loop writes the journal itself, every JOURNAL_EVERY
    # and whenever it is full, when the lock is free (`try_flush`); the scheduler thread writes it
    # only when the loop could not, or has not for JOURNAL_STALE seconds.
    JOURNAL_EVERY, JOURNAL_STALE = 0.02, 1.0

    def _journal_on_loop(self, svc) -> None:
        journal = svc.journal
        self._thread_hand_off = journal.hand_off
        journal.hand_off = self._journal_hand_off
        rounds = svc.scheduler.each_round
        if journal.flush in rounds:
            rounds[rounds.index(journal.flush)] = self._journal_in_thread
        self._journal_due = self._journal_wanted = self._ticking = False
        self._journal_written = _monotonic()

    def _journal_hand_off(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a thread of the pool
            self._journal_wanted = True
            return self._thread_hand_off is not None and self._thread_hand_off()
        if not self._journal_due:
            self._journal_due = True
            loop.call_soon(self._flush_journal)
        return True

    def _tick(self) -> None:
        if len(self.svc.journal):
            self._flush_journal()
        else:
            self._journal_written = _monotonic()
        asyncio.get_running_loop().call_later(self.JOURNAL_EVERY, self._tick)

    def _flush_journal(self) -> None:
        self._journal_due = False
        try:
            if self.svc.journal.try_flush():
                self._journal_written = _monotonic()
                return
        except Exception:  # a store hiccup: the entries stay buffered
            pass
        self._journal_wanted = True
        if self._thread_hand_off is not None:
            self._thread_hand_off()

    def _journal_in_thread(self) -> None:
        """The scheduler's round: write the journal if the loop could not (or the worker stops)."""
        if (self._journal_wanted or _monotonic() - self._journal_written > self.JOURNAL_STALE
                or self.svc.scheduler.stopping):
            self._journal_wanted = False
            self.svc.journal.flush()

    def api(self, req: api.ApiRequest, answer=None):
        """An API request on the loop: its ApiResponse (journaled); or WAITING: a cover waits for
        its batched store write, and answer(ApiResponse) is called with the response, already
        journaled, once it is written; or None: not an API request for the loop (`wsgi`)."""
        if not self._ticking:  # the first request on the loop starts the journal's writes there
            self._ticking = True
            asyncio.get_running_loop().call_later(self.JOURNAL_EVERY, self._tick)
        handler = api.ROUTES.get((req.method, req.path))
        if handler is None or (handler is api.upload_cover and self.svc.cfg.source_check):
            return None
        if self.pooled:
            return self._in_pool(handler, req, answer)
        return self._run(handler, req, answer)

    def _run(self, handler, req, answer):
        try:
            resp = api.start(self.svc, handler, req)
        except api.Delay as delay:  # an injected latency: a timer, not a thread that sleeps
            req.delayed = True
            asyncio.get_running_loop().call_later(delay.seconds, self._resume, handler, req, answer)
            return WAITING
        except api.MustBlock:
            return None
        if isinstance(resp, api.PendingCover):
            if resp.draft.fault is None:
                self.batcher.write(resp, lambda written: answer(api.finish(self.svc, req, written)))
                return WAITING
            # it took an armed scenario: settled before any other request's draft, so a 402
            # gives it back to the next cover
            resp = api.settle_now(self.svc, resp)
        return api.finish(self.svc, req, resp)

    def _resume(self, handler, req, answer) -> None:
        """A request whose injected latency has passed: run again, and answered."""
        try:
            resp = self._run(handler, req, answer)
        except Exception as exc:  # answered whatever happens
            resp = api.bug(exc)
        if resp is WAITING:
            return
        if resp is None:  # it must wait for a lock after all: in the pool
            self._in_pool(handler, req, answer)
            return
        _deliver(answer, resp)

    def _in_pool(self, handler, req, answer):
        """Run the API request in the pool (its waits there, not on the loop): WAITING, and
        answer(ApiResponse) on the loop once it is done. An injected latency is still a timer on
        the loop: the request comes back to the pool when it is up."""
        req.inline, req.timed = False, True

        def done(fut) -> None:
            try:
                answered = fut.result()
            except api.Delay as delay:
                req.delayed = True
                asyncio.get_running_loop().call_later(delay.seconds, self._in_pool, handler, req, answer)
                return
            except BaseException as exc:  # cancelled (stopping) included
                answered = api.bug(exc)
            _deliver(answer, answered)
        try:
            asyncio.get_running_loop().run_in_executor(self.pool, api.handle, self.svc, handler, req) \
                .add_done_callback(done)
        except RuntimeError as exc:  # the pool is shut down: stopping
            _deliver(answer, api.bug(exc))
        return WAITING

    def wsgi(self, environ: dict) -> asyncio.Future:
        """The Flask app (control API, files, API requests that may wait) in the pool: a future
        of (status code, headers, body bytes)."""
        return asyncio.get_running_loop().run_in_executor(self.pool, run_wsgi, self.wsgi_app, environ)

    def close(self) -> None:
        """Stop the threads: requests not started are cancelled, the ones running finish."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()


def wsgi_environ(method: str, path_info: str, query: str, server: tuple[str, str], client: tuple[str, str],
                 version: str, scheme: str, body: bytes, headers, multiprocess: bool) -> dict:
    """The WSGI environ of a request an event-loop server read whole. path_info: WSGI's "bytes
    as latin-1"; headers: (lower-case name, value) pairs, a repeated name joined by commas."""
    env = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": server[0] or "localhost",
        "SERVER_PORT": server[1] or "80",
        "SERVER_PROTOCOL": f"HTTP/{version}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": client[1],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name == "content-length":
            env["CONTENT_LENGTH"] = value
        elif "_" not in name:  # X_Admin_Token would pass for X-Admin-Token: dropped, as nginx does
            key = "HTTP_" + name.upper().replace("-", "_")
            env[key] = f"{env[key]},{value}" if key in env else value
    if "HTTP_TRANSFER_ENCODING" in env:  # the server took the chunks off: the app reads the body by length
        del env["HTTP_TRANSFER_ENCODING"]  # (Werkzeug reads no body at all from a "chunked" environ)
        env["CONTENT_LENGTH"] = str(len(body))
    elif "CONTENT_LENGTH" not in env and body:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def run_wsgi(app, environ: dict):
    """Call a WSGI app; (status code, headers, body bytes)."""
    started: list = []

    def start_response(status, headers, exc_info=None):
        started[:] = [status, headers]

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return int(status.split(" ", 1)[0]), [(k, v) for k, v in headers], body


class AcceptBatcher:
    """Store writes of accepted covers, batched per turn of the event loop: the covers that
    reached their write during one turn are written together (`store.try_accept_many`: one
    transaction on SQLite) in a callback that runs after them, and each request answers once its
    write is done. Nothing is acknowledged before it is stored; under load one commit serves
    many requests, alone a request waits for no one.

    This write never sleeps on the store's write lock: while another writer (a worker process, a
    thread) holds it, the batch is tried again a little later, and the covers arriving meanwhile
    join it; the loop serves other requests in between. A lock still held after BUSY_GIVE_UP
    seconds (the blocking writers' own patience) fails the batch with the store's error (500).
    A rate-window slot (when a limit is set) is taken before, and never waited for on the loop
    either: if the lock is held, the request is run again in the thread pool (`api.MustBlock`).
    A cover refused with 402 that holds a rate slot is answered in a thread of the batcher's own
    (giving the slot back is a write). Taking an armed fault, which is rare, still waits the
    blocking way.

    Covers are drafted before the batch is written, so two covers of one turn are checked
    against the same rate window: a cover refused with 402 holds its slot until its batch is
    written and its give-back is done (a write, in the give-back thread). A cover that took an
    armed scenario is not batched (see RsgiApp)."""

    RETRY_FIRST, RETRY_MAX = 0.0001, 0.002
    BUSY_GIVE_UP = 30.0

    def __init__(self, store):
        self.store = store
        # A cover refused with 402 gives its rate slot back: a write that may wait for the lock,
        # made in a thread of its own (not the HTTP pool, which slow uploadUrl checks can fill).
        self._give_back_pool: ThreadPoolExecutor | None = None
        self.pending: list = []
        self.scheduled = False
        self.retry = 0.0
        self.busy_since = None
        self.batches = self.written = self.busy = 0  # counters, for diagnostics

    def write(self, pending, answer=None):
        """Queue a cover's store write. answer(ApiResponse) is called on the loop once it is
        written; without one, a future of the ApiResponse is returned."""
        loop = asyncio.get_running_loop()
        fut = None
        if answer is None:
            fut = loop.create_future()
            answer = functools.partial(resolve, fut)
        self.pending.append((pending, answer))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        loop = asyncio.get_running_loop()
        batch = self.pending
        try:
            results = self.store.try_accept_many([p.draft.accept_args() for p, _ in batch])
            if results is not None and len(results) != len(batch):
                raise RuntimeError(f"try_accept_many answered {len(results)} of {len(batch)} items")
        except Exception as exc:  # it answers per item; this is a bug or a lost store
            results = [exc] * len(batch)
        if results is None:  # another writer holds the lock: again soon, with whatever joins meanwhile
            self.busy += 1
            if self.busy_since is None:
                self.busy_since = loop.time()
            if loop.time() - self.busy_since < self.BUSY_GIVE_UP:
                self.retry = min(max(self.retry * 2, self.RETRY_FIRST), self.RETRY_MAX)
                loop.call_later(self.retry, self.flush)
                return
            results = [StoreLocked(f"the store's write lock stayed held for {self.BUSY_GIVE_UP:g} s")] * len(batch)
        self.pending, self.scheduled, self.retry, self.busy_since = [], False, 0.0, None
        self.batches += 1
        self.written += len(batch)
        for (pending, answer), result in zip(batch, results):
            if result is None and pending.draft.token and self._answer_in_thread(loop, pending, answer):
                continue
            try:
                resp = pending.answer(result)
            except Exception as exc:  # answering must not fail, and must not leave the others waiting
                resp = api.bug(exc)
            _deliver(answer, resp)

    def _answer_in_thread(self, loop, pending, answer) -> bool:
        """Answer a refused cover (its give-back included) in the give-back thread; False if
        that cannot be started (then the caller answers it at once)."""
        def done(answered):
            try:
                resp = answered.result()
            except BaseException as exc:  # cancelled included: the request is answered whatever happens
                resp = api.bug(exc)
            _deliver(answer, resp)
        try:
            if self._give_back_pool is None:
                self._give_back_pool = ThreadPoolExecutor(1, thread_name_prefix="kie-mock-give-back")
            loop.run_in_executor(self._give_back_pool, pending.answer, None).add_done_callback(done)
        except Exception:  # e.g. the pool was shut down
            return False
        return True

    def close(self) -> None:
        if self._give_back_pool is not None:
            self._give_back_pool.shutdown(wait=True)


def resolve(fut: asyncio.Future, resp) -> None:
    if not fut.cancelled():  # the request was abandoned (its client went away)
        fut.set_result(resp)


def _deliver(answer, resp) -> None:
    try:
        answer(resp)
    except Exception:  # one request's answer must not keep the others of its batch from theirs
        traceback.print_exc()
