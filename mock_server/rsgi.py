"""The fake on granian's RSGI interface: API requests run on the worker's event loop, the rest
(control API, files, anything that may wait) in a thread pool through the Flask WSGI app.

Why: granian's WSGI interface hands every request to one of N Python threads, and with more
than one thread they fight over the GIL (measured on 2 cores, memory store, POST upload-cover:
10,900 req/s with one thread, 7,900 with two, 5,500 with four). One thread alone would let a
single slow request (an injected latency, an uploadUrl check) stall every other client. Here
the fast, CPU-only requests run one after the other on the loop, with no thread switch, and
anything that may block runs in the pool while the loop goes on serving:

- an API request whose handler would sleep (injected latency) or wait for SQLite's write lock
  to take a rate-window slot stops before it changed any state (`api.MustBlock`) and is run
  again in the pool;
- with the uploadUrl check on, upload-cover always runs in the pool;
- everything else (control API, files, 404s) goes to the Flask app in the pool.

Bodies are read as they arrive (a slow client holds no thread) and at most `max_body_bytes`
plus one byte are kept: the handlers then answer "too large" in the envelope.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor

import orjson

from . import api

POOL_THREADS = 8


class ScopeRequest(api.ApiRequest):
    """An API request read straight from the RSGI scope and body (no WSGI environ is built)."""

    inline = True

    def __init__(self, scope, body: bytes):
        self.scope, self.body = scope, body
        self.headers = scope.headers
        self.method, self.path = scope.method, scope.path  # granian percent-decodes the path (UTF-8)
        self.key_masked = None
        self.view = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_string(self) -> str:
        return self.scope.query_string

    def scheme(self) -> str:
        return self.scope.scheme

    def content_type(self) -> str:
        return self.headers.get("content-type") or ""

    def content_length(self) -> str | None:
        return self.headers.get("content-length")

    def raw_body(self, max_bytes: int) -> bytes:
        return self.body[:max_bytes + 1]


def _environ(scope, body: bytes, multiprocess: bool) -> dict:
    host, _, port = (scope.server or "").rpartition(":")
    client_host, _, client_port = (scope.client or "").rpartition(":")
    env = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),  # WSGI's "bytes as latin-1"
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": host or "localhost",
        "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client_host,
        "REMOTE_PORT": client_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
    }
    for name, value in scope.headers.items():
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name == "content-length":
            env["CONTENT_LENGTH"] = value
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            env[key] = f"{env[key]},{value}" if key in env else value
    return env


def _run_wsgi(app, environ: dict):
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
        # made in a thread of its own (not the HTTP pool, which injected latencies can fill).
        self._give_back_pool: ThreadPoolExecutor | None = None
        self.pending: list = []
        self.scheduled = False
        self.retry = 0.0
        self.busy_since = None
        self.batches = self.written = self.busy = 0  # counters, for diagnostics

    def write(self, pending) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((pending, fut))
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
            results = [TimeoutError(f"the store's write lock stayed held for {self.BUSY_GIVE_UP:g} s")] * len(batch)
        self.pending, self.scheduled, self.retry, self.busy_since = [], False, 0.0, None
        self.batches += 1
        self.written += len(batch)
        for (pending, fut), result in zip(batch, results):
            if result is None and pending.draft.token and self._answer_in_thread(loop, pending, fut):
                continue
            try:
                resp = pending.answer(result)
            except Exception as exc:  # answering must not fail, and must not leave the others waiting
                resp = api.bug(exc)
            if not fut.cancelled():
                fut.set_result(resp)

    def _answer_in_thread(self, loop, pending, fut) -> bool:
        """Answer a refused cover (its give-back included) in the give-back thread; False if
        that cannot be started (then the caller answers it at once)."""
        def done(answered):
            try:
                resp = answered.result()
            except BaseException as exc:  # cancelled included: the request is answered whatever happens
                resp = api.bug(exc)
            if not fut.cancelled():
                fut.set_result(resp)
        try:
            if self._give_back_pool is None:
                self._give_back_pool = ThreadPoolExecutor(1, thread_name_prefix="kie-mock-give-back")
            loop.run_in_executor(self._give_back_pool, pending.answer, None).add_done_callback(done)
        except Exception:  # e.g. the pool was shut down
            return False
        return True


class RsgiApp:
    def __init__(self, svc, wsgi_app, multiprocess: bool = False):
        self.svc, self.wsgi_app, self.multiprocess = svc, wsgi_app, multiprocess
        self.limit = svc.cfg.max_body_bytes + 1
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="kie-mock-http")
        self.batcher = AcceptBatcher(svc.store)

    async def _body(self, proto, scope) -> bytes:
        length = scope.headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                return b""  # not read at all: the handlers answer "too large" from the declared length
            return await proto()  # the whole body, at most `limit` bytes by its declared length
        chunks, size = [], 0
        async for chunk in proto:
            if size < self.limit:
                chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        return body[:self.limit] if len(body) > self.limit else body

    async def __call__(self, scope, proto):
        if scope.proto != "http":
            return
        try:
            await self._serve(scope, proto)
        except Exception as exc:  # a bug of the fake: still an envelope, and visible in the log
            traceback.print_exc()
            body = orjson.dumps({"code": 500, "msg": f"Internal Error (kie-mock bug): {type(exc).__name__}",
                                 "data": None})
            try:
                proto.response_bytes(500, [("content-type", "application/json")], body)
            except Exception:  # the response was already started or the client is gone
                pass

    async def _serve(self, scope, proto):
        body = await self._body(proto, scope)
        req = ScopeRequest(scope, body)
        handler = api.ROUTES.get((req.method, req.path))
        if handler is not None and not (handler is api.upload_cover and self.svc.cfg.source_check):
            try:
                resp = api.start(self.svc, handler, req)
            except api.MustBlock:
                pass
            else:
                if isinstance(resp, api.PendingCover):
                    if resp.draft.fault is None:
                        resp = await self.batcher.write(resp)
                    else:  # it took an armed scenario: settled before any other request's draft, so
                        resp = api.settle_now(self.svc, resp)  # a 402 gives it back to the next cover
                resp = api.finish(self.svc, req, resp)
                proto.response_bytes(resp.status, api.response_headers(resp), resp.body)
                return
        environ = _environ(scope, body, self.multiprocess)
        loop = asyncio.get_running_loop()
        status, headers, out = await loop.run_in_executor(self.pool, _run_wsgi, self.wsgi_app, environ)
        if environ["REQUEST_METHOD"] == "HEAD":
            out = b""
        proto.response_bytes(status, headers, out)
