"""kie-mock's built-in HTTP/1.1 server: asyncio protocols on uvloop, requests parsed by httptools
(llhttp, Node's parser; the same pair uvicorn runs on), straight into the API on the event loop
(onloop.py), with no server interface (ASGI, RSGI) in between.

Why: the fake's own work per request is small, so the HTTP server's is a large share of it.
Measured on 2 cores with wrk sharing them, a constant answer: 89,700 req/s here against 37,400
on granian's RSGI; the full accept path (SQLite store, one worker): see README "Benchmarks".

One connection, one `Connection` protocol:
- requests are answered in the order they came (pipelining included): a request that waits
  (a batched store write, the thread pool) holds back the ones after it, which queue (at most
  PIPELINE_MAX; past that the connection stops reading);
- limits: the request line and headers at most HEAD_MAX bytes and HEADERS_MAX fields (431),
  bodies kept up to the API's limit plus one byte (the handlers answer "too large"; the rest is
  read and dropped), malformed HTTP gets a 400 envelope and the connection is closed;
- time: a request must arrive whole within REQUEST_TIMEOUT of its first byte, an idle
  keep-alive connection is closed after KEEP_ALIVE; one sweep a second checks them all;
- a response written faster than the client reads stops reading its further requests.
"""

from __future__ import annotations

import asyncio
import io
import signal
import sys
import time
import traceback
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import orjson

from . import api
from .onloop import WAITING, OnLoop

HEAD_MAX = 64 * 1024  # request line + headers, bytes
HEADERS_MAX = 100  # header fields
PIPELINE_MAX = 16  # requests parsed ahead of their answer, per connection
REQUEST_TIMEOUT = 30.0  # from a request's first byte to its last
KEEP_ALIVE = 75.0  # idle time between requests
DRAIN_TIMEOUT = 5.0  # at shutdown: how long requests in progress may take to finish
SWEEP_EVERY = 1.0  # how often the timeouts are checked

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "date"})


class _Date:
    """The Date header, formatted once a second."""

    second, value = -1, b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True).encode()
        return cls.value


def _envelope_bytes(code: int, msg: str) -> bytes:
    return orjson.dumps({"code": code, "msg": msg, "data": None})


class HttpRequest(api.ApiRequest):
    """One parsed request: what the handlers read, and what the WSGI environ is built from."""

    inline = True

    def __init__(self, method: str, raw_path: bytes, query: bytes, headers: dict, body: bytes,
                 version: str, keep_alive: bool, conn: "Connection"):
        self.method, self.raw_path, self.raw_query, self.headers = method, raw_path, query, headers
        self.body, self.version, self.keep_alive, self.conn = body, version, keep_alive, conn
        # the path percent-decoded, as UTF-8 (undecodable bytes kept as surrogates: matches no route)
        self.path = raw_path.decode("utf-8", "surrogateescape")
        self.key_masked = None
        self.view = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_string(self) -> str:
        return self.raw_query.decode("latin-1")

    def scheme(self) -> str:
        return "http"

    def content_type(self) -> str:
        return self.headers.get("content-type") or ""

    def content_length(self) -> str | None:
        return self.headers.get("content-length")

    def raw_body(self, max_bytes: int) -> bytes:
        return self.body[:max_bytes + 1]

    def environ(self, multiprocess: bool) -> dict:
        conn = self.conn
        env = {
            "REQUEST_METHOD": self.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.raw_path.decode("latin-1"),  # WSGI's "bytes as latin-1"
            "QUERY_STRING": self.query_string(),
            "SERVER_NAME": conn.server_host,
            "SERVER_PORT": conn.server_port,
            "SERVER_PROTOCOL": f"HTTP/{self.version}",
            "REMOTE_ADDR": conn.client_host,
            "REMOTE_PORT": conn.client_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(self.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            if name == "content-type":
                env["CONTENT_TYPE"] = value
            elif name == "content-length":
                env["CONTENT_LENGTH"] = value
            else:
                env["HTTP_" + name.upper().replace("-", "_")] = value
        if "CONTENT_LENGTH" not in env and self.body:  # a chunked body: WSGI apps read by length
            env["CONTENT_LENGTH"] = str(len(self.body))
        return env


class Connection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    __slots__ = ("server", "transport", "parser", "url", "headers", "fields", "head_bytes", "body", "body_size",
                 "started", "last_active", "busy", "queue", "closing", "write_paused", "read_paused", "oversized",
                 "server_host", "server_port", "client_host", "client_port")

    def __init__(self, server: "HttpServer"):
        self.server = server
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict = {}
        self.fields = self.head_bytes = 0
        self.body: list = []
        self.body_size = 0
        self.started = None  # monotonic time of the current request's first byte
        self.last_active = time.monotonic()
        self.busy = False  # a request of this connection is being answered
        self.queue: deque = deque()  # requests parsed while busy
        self.closing = False
        self.write_paused = self.read_paused = False
        self.oversized = False  # the current request declared a body over the limit (answered already)

    # -- transport events ---------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.server_host, self.server_port = _host_port(transport.get_extra_info("sockname"))
        self.client_host, self.client_port = _host_port(transport.get_extra_info("peername"))
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.queue.clear()
        self.server.connections.discard(self)

    def data_received(self, data: bytes):
        if self.closing:
            return
        if self.started is None:
            self.started = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # an Upgrade request (WebSocket, h2c) is answered as plain HTTP, then the connection closes
        except httptools.HttpParserError as exc:  # also a limit's refusal (_Refused) from a callback
            if not self.closing:
                self._refuse(400, f"bad request: the HTTP message is malformed ({exc})")

    def pause_writing(self):
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self):
        self.write_paused = False
        if len(self.queue) < PIPELINE_MAX:
            self._resume_reading()

    def _pause_reading(self):
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self):
        if self.read_paused and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self):
        self.url, self.headers, self.fields, self.head_bytes, self.body, self.body_size = b"", {}, 0, 0, [], 0
        if self.started is None:
            self.started = time.monotonic()

    def on_url(self, url: bytes):
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > HEAD_MAX:
            self._refuse(414, f"the request line is too long (more than {HEAD_MAX} bytes)")
            raise _Refused

    def on_header(self, name: bytes, value: bytes):
        self.head_bytes += len(name) + len(value) + 4
        self.fields += 1
        if self.head_bytes > HEAD_MAX or self.fields > HEADERS_MAX:
            self._refuse(431, f"the request's headers are too large (at most {HEADERS_MAX} fields, "
                              f"{HEAD_MAX} bytes)")
            raise _Refused
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self):
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.on_loop.limit:
            # Answered now from the declared length ("too large"), its body not awaited; the
            # connection then closes (what follows is that body).
            self.oversized = True
            self._complete(keep_alive=False)
        elif self.headers.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes):
        if self.oversized:
            return
        limit = self.server.on_loop.limit
        if self.body_size < limit:
            self.body.append(chunk[:limit - self.body_size])
        self.body_size += len(chunk)

    def on_message_complete(self):
        if self.oversized:  # answered already
            self.oversized = False
            return
        self._complete(self.parser.should_keep_alive() and not self.parser.should_upgrade())

    def _complete(self, keep_alive: bool) -> None:
        """The request parsed so far, whole: answer it, or queue it behind the one being answered."""
        parser = self.parser
        try:
            url = httptools.parse_url(self.url)
            raw_path, query = unquote_to_bytes(url.path or b"/"), url.query or b""
        except (httptools.HttpParserInvalidURLError, ValueError, TypeError):
            self._refuse(400, "bad request: the request target is not a valid URL")
            raise _Refused from None
        req = HttpRequest(parser.get_method().decode("latin-1"), raw_path, query, self.headers,
                          b"".join(self.body), parser.get_http_version(), keep_alive, self)
        self.headers, self.body = {}, []
        self.started = None
        if self.busy:
            self.queue.append(req)
            if len(self.queue) >= PIPELINE_MAX:
                self._pause_reading()
        else:
            self._serve(req)

    # -- answering ----------------------------------------------------------------------------------
    def _serve(self, req: HttpRequest) -> None:
        self.busy = True
        try:
            resp = self.server.on_loop.api(req, lambda answer: self._answer(req, answer))
            if resp is None:
                environ = req.environ(self.server.on_loop.multiprocess)
                self.server.on_loop.wsgi(environ).add_done_callback(lambda fut: self._wsgi_done(req, fut))
            elif resp is not WAITING:
                self._answer(req, resp)
        except Exception as exc:  # a bug of the fake: still an envelope, and visible in the log
            self._send(req, 500, [("Content-Type", "application/json")], _bug(exc))

    def _answer(self, req: HttpRequest, resp: api.ApiResponse) -> None:
        self._send(req, resp.status, api.response_headers(resp), resp.body)

    def _wsgi_done(self, req: HttpRequest, fut: asyncio.Future) -> None:
        try:
            status, headers, body = fut.result()
        except BaseException as exc:  # the pool was shut down (the server is stopping), or a bug
            status, headers, body = 500, [("Content-Type", "application/json")], _bug(exc)
        self._send(req, status, headers, body)

    def _send(self, req: HttpRequest, status: int, headers: list, body: bytes) -> None:
        keep_alive = req.keep_alive and not self.server.stopping
        if not self.closing:
            out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
            length = len(body)
            for name, value in headers:
                lower = name.lower()
                if lower not in _HOP:
                    out.append(b"%s: %s\r\n" % (name.encode("latin-1"), str(value).encode("latin-1")))
                elif lower == "content-length" and req.method == "HEAD":
                    length = int(value)  # what a GET would carry (the app sent no body)
            out.append(b"content-length: %d\r\ndate: %s\r\n" % (length, _Date.get()))
            if not keep_alive:
                out.append(b"connection: close\r\n")
            out.append(b"\r\n")
            if req.method != "HEAD":
                out.append(body)
            self.transport.write(b"".join(out))
            if not keep_alive:
                self._close()
        self.busy = False
        self.last_active = time.monotonic()
        if self.queue and not self.closing:
            self._serve(self.queue.popleft())
            if len(self.queue) < PIPELINE_MAX and not self.write_paused:
                self._resume_reading()

    def _refuse(self, status: int, msg: str) -> None:
        """Answer a request the parser, a limit or a timeout refused, then close: what follows
        on this connection cannot be framed. (A parser callback then raises _Refused to stop
        the parser.)"""
        if not self.closing:
            if not self.busy:
                body = _envelope_bytes(422 if status == 400 else status, msg)
                self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                     b"date: %s\r\nconnection: close\r\n\r\n%s"
                                     % (status, _REASONS.get(status, b"Unknown"), len(body), _Date.get(), body))
            self._close()  # a request still in progress: it cannot be answered in order after this one

    def _close(self) -> None:
        if not self.closing:
            self.closing = True
            self.queue.clear()
            self.transport.close()

    def check_time(self, now: float) -> None:
        """Called by the server's sweep: close a connection that stalled."""
        if self.closing:
            return
        if self.started is not None and not self.busy and now - self.started > REQUEST_TIMEOUT:
            self._refuse(408, f"request timeout: a request must arrive within {REQUEST_TIMEOUT:g} s")
        elif self.started is None and not self.busy and not self.queue and now - self.last_active > KEEP_ALIVE:
            self._close()


class _Refused(Exception):
    """Raised in a parser callback after a refusal: stops the parser (feed_data then raises
    HttpParserCallbackError)."""


def _host_port(addr) -> tuple[str, str]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), str(addr[1])
    return "", ""


def _bug(exc: BaseException) -> bytes:
    traceback.print_exception(exc)
    return _envelope_bytes(500, f"Internal Error (kie-mock bug): {type(exc).__name__}")


class HttpServer:
    """One worker's server: its connections and their sweep, on a listening socket it is given."""

    def __init__(self, on_loop: OnLoop):
        self.on_loop = on_loop
        self.connections: set[Connection] = set()
        self.stopping = False

    async def serve(self, sock, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
        sweep = loop.create_task(self._sweep())
        try:
            await stop.wait()
        finally:
            self.stopping = True
            server.close()  # no new connections; the ones open finish what they started
            deadline = loop.time() + DRAIN_TIMEOUT
            while any(c.busy or c.queue for c in self.connections) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn._close()
            sweep.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_time(now)


def run_worker(sock, on_loop_factory) -> None:
    """Serve on `sock` until SIGTERM or SIGINT; `on_loop_factory()` builds the worker's OnLoop
    (after a fork: in the worker). Then stop the worker's scheduler (its last round flushes the
    request journal) and close its store."""
    try:
        import uvloop
    except ImportError:  # no wheel for this platform: asyncio's own loop (slower)
        uvloop = None

    on_loop = on_loop_factory()
    svc = on_loop.svc

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await HttpServer(on_loop).serve(sock, stop)

    try:
        (uvloop.run if uvloop is not None else asyncio.run)(main())
    finally:
        on_loop.close()
        svc.scheduler.stop()
        try:
            svc.journal.flush()
        finally:
            svc.store.close()
        sock.close()
