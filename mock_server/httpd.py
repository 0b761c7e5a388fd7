"""kie-mock's built-in HTTP/1.1 server: asyncio protocols on uvloop, requests parsed by httptools
(llhttp, Node's parser; the same pair uvicorn runs on), straight into the API on the event loop
(onloop.py), with no server interface (ASGI, RSGI) in between.

Why: the fake's own work per request is small, so the HTTP server's is a large share of it.
Measured on 2 cores with wrk sharing them, a constant answer: 89,700 req/s here against 37,400
on granian's RSGI; the full accept path (SQLite store, one worker): see README "Benchmarks".

One connection, one `Connection` protocol:
- requests are answered in the order they came (pipelining included), one at a time: a request
  that waits (a batched store write, the thread pool) holds back the ones after it, which queue
  (past PIPELINE_MAX requests or PIPELINE_BYTES of their bodies the connection stops reading
  and parsing, and it stops serving while the client does
  not read its answers);
- limits: the request line and headers at most HEAD_MAX bytes (bounded as they arrive, not only
  field by field) and HEADERS_MAX fields (431), bodies kept up to the API's limit plus one byte
  (the handlers answer "too large"; the rest is read and dropped; a declared length over the
  limit is answered at once); malformed HTTP gets a 400 envelope. A refusal comes after the
  answers to the requests before it, then the connection closes;
- closing after an answer while the client may still be sending, the server shuts its side and
  reads and drops the rest until the client has been quiet for LINGER seconds, so the client is
  not reset before it reads;
- a client that half-closes still gets every answer it is owed; an Upgrade request (curl's h2c)
  is answered as HTTP/1.1, its body included, then the connection closes;
- time: a request must arrive whole within REQUEST_TIMEOUT of its first byte (408), an idle
  keep-alive connection is closed after KEEP_ALIVE, a client that reads none of its answers is
  reset after REQUEST_TIMEOUT; one sweep a second checks them all.
"""

from __future__ import annotations

import asyncio
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
from .onloop import WAITING, LoopRequest, OnLoop, wsgi_environ

HEAD_MAX = 64 * 1024  # request line + headers, bytes
HEADERS_MAX = 100  # header fields
PIPELINE_MAX = 16  # requests parsed ahead of their answer, per connection
PIPELINE_BYTES = 2 << 20  # and their bodies' bytes (a body alone may be larger: the API's limit)
FEED_SLICE = 8192  # bytes parsed at a time: past those bounds the rest waits unparsed
REQUEST_TIMEOUT = 30.0  # from a request's first byte to its last
KEEP_ALIVE = 75.0  # idle time between requests
FIRST_BYTE = 10.0  # a new connection that has sent nothing by then is closed (idle ones hold descriptors)
PARTIAL_BUDGET = 64 << 20  # bytes of unfinished request bodies a worker holds for all its connections
PARTIAL_SMALL = 64 << 10  # an unfinished body this small is refused only past twice the budget (a cover is ~1 KiB)
DRAIN_TIMEOUT = 5.0  # at shutdown: how long requests in progress may take to finish
SWEEP_EVERY = 1.0  # how often the timeouts are checked
LINGER = 2.0  # after a refusal or an unread body: input read and dropped this long before the close
CLOSE_GRACE = 10.0  # a closing connection whose client does not read what is left is then reset

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON = [("Content-Type", "application/json")]
_now = time.monotonic
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


class HttpRequest(LoopRequest):
    """One parsed request: what the handlers read, and what the WSGI environ is built from."""

    def __init__(self, method: str, raw_path: bytes, query: bytes, headers: dict, body: bytes,
                 version: str, keep_alive: bool, conn: "Connection"):
        self.method, self.raw_path, self.raw_query, self.headers = method, raw_path, query, headers
        self.body, self.version, self.keep_alive, self.conn = body, version, keep_alive, conn
        # the path percent-decoded, as UTF-8 (undecodable bytes kept as surrogates: matches no route)
        self.path = raw_path.decode("utf-8", "surrogateescape")
        self.key_masked = None
        self.view = None

    def query_string(self) -> str:
        return self.raw_query.decode("latin-1")

    def scheme(self) -> str:
        return "http"

    def environ(self, multiprocess: bool) -> dict:
        conn = self.conn
        return wsgi_environ(self.method, self.raw_path.decode("latin-1"), self.query_string(),
                            (conn.server_host, conn.server_port), (conn.client_host, conn.client_port),
                            self.version, "http", self.body, self.headers.items(), multiprocess)


class Connection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    __slots__ = ("server", "transport", "parser", "msg_no", "head_raw", "url", "headers", "fields", "head_bytes",
                 "trailer_bytes", "body", "body_size", "oversized", "expect", "upgrade", "upgraded", "started",
                 "last_active", "busy", "pumping", "feeding", "held", "queue", "queued_bytes", "refusal", "eof", "closing",
                 "lingering", "out_size", "out_at", "drained_at", "last_input", "write_paused", "read_paused",
                 "read_paused_at", "trailer_raw", "busy_since", "partial", "sent_any",
                 "server_host", "server_port", "client_host", "client_port")

    def __init__(self, server: "HttpServer"):
        self.server = server
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.msg_no = 0  # requests begun on this connection
        self.head_raw = None  # in a request's head: its bytes read after the read it began in; else None
        self.url = b""
        self.headers: dict = {}
        self.fields = self.head_bytes = self.trailer_bytes = 0
        self.body: list = []
        self.body_size = 0
        self.partial = 0  # bytes of `body` counted in the server's partial_bytes (an unfinished request's)
        self.sent_any = False  # the client has sent a byte
        self.oversized = False  # the current request declared a body over the limit (answered already)
        self.expect = False  # a "100 Continue" owed once the requests before this one are answered
        self.upgrade = None  # [request, body bytes still to read] of an Upgrade request with a body
        self.upgraded = False  # after an Upgrade request nothing more is HTTP/1.1: input is ignored
        self.started = None  # monotonic time of the current request's first byte
        self.last_active = _now()
        self.busy = False  # a request of this connection is being answered
        self.pumping = self.feeding = False
        self.held = b""  # bytes read but not parsed yet: the queue was full
        self.queue: deque = deque()  # requests parsed, waiting for the ones before them
        self.queued_bytes = 0  # their bodies' bytes
        self.refusal = None  # (status, message): sent, then close, once the requests before are answered
        self.eof = False  # the client closed its side: answer what it sent, then close
        self.closing = False
        self.lingering = False  # closing: the client's input is read and dropped for LINGER seconds
        self.out_size, self.out_at, self.drained_at = -1, 0.0, None  # closing: what is left to send
        self.last_input = 0.0  # closing: when the client last sent something
        self.write_paused = self.read_paused = False
        self.read_paused_at = self.busy_since = 0.0
        self.trailer_raw = None  # past a chunked body's last chunk header: the trailer's bytes so far

    # -- transport events ---------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.server_host, self.server_port = _host_port(transport.get_extra_info("sockname"))
        self.client_host, self.client_port = _host_port(transport.get_extra_info("peername"))
        self.server.connections.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.queue.clear()
        self.queued_bytes = 0
        self._drop_body()
        self.held = b""
        self.headers = {}
        self.server.connections.discard(self)

    def _drop_body(self) -> None:
        """The unfinished body is no longer held: out of the server's count (and freed now, not
        when a collection breaks the connection's cycle with its parser)."""
        self.server.partial_bytes -= self.partial
        self.partial = 0
        self.body = []

    def data_received(self, data: bytes):
        self.sent_any = True
        if self.closing:  # lingering: dropped
            self.last_input = _now()
            return
        if self.held:  # reading was paused, a read was under way: after what waits
            self.held += data
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse `data` a slice at a time; once the queue is full, hold the rest (and stop
        reading) until it has room again (`_pump`)."""
        self.feeding = True
        try:
            pos, end = 0, len(data)
            while pos < end:
                if self.closing or self.upgraded or self.refusal is not None:
                    return  # lingering, or past a point where nothing more is parsed
                if self.upgrade is not None:
                    self._upgrade_body(data[pos:])
                    return
                if self._queue_full():
                    self.held = data[pos:]
                    self._pause_reading()
                    return
                piece = data if pos == 0 and end <= FEED_SLICE else data[pos:pos + FEED_SLICE]
                pos += len(piece)
                self._parse(piece)
        finally:
            self.feeding = False

    def _parse(self, piece: bytes) -> None:
        in_head, in_trailer, msg_no = self.head_raw is not None, self.trailer_raw is not None, self.msg_no
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(piece, exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(piece))
            return
        except httptools.HttpParserError as exc:  # also a limit's refusal (_Refused) from a callback
            if self.refusal is None and not self.closing:
                self._refuse(400, f"bad request: the HTTP message is malformed ({exc})")
            return
        if self.msg_no != msg_no:
            return
        # A whole slice of head or of trailer, which httptools buffers until its field ends:
        # bounded here, not only field by field (one endless field would never end).
        if in_head and self.head_raw is not None:
            self.head_raw += len(piece)
            if self.head_raw > HEAD_MAX:
                self._refuse(431, f"the request's headers are too large (more than {HEAD_MAX} bytes)")
        elif in_trailer and self.trailer_raw is not None:
            self.trailer_raw += len(piece)
            if self.trailer_raw > HEAD_MAX:
                self._refuse(431, f"the request's trailers are too large (more than {HEAD_MAX} bytes)")

    def eof_received(self):
        self.eof = True
        if self.lingering:
            return False  # the client read our answer and closed: done
        if self.busy or self.queue or self.held:
            self._pump()
            return True  # keep the write side open for the answers it is owed
        return False

    def pause_writing(self):
        self.write_paused = True
        self.out_size, self.out_at = -1, _now()
        self._pause_reading()

    def resume_writing(self):
        self.write_paused = False
        self._pump()

    def _pause_reading(self):
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.read_paused_at = _now()
            self.transport.pause_reading()

    def _resume_reading(self):
        if self.read_paused and not self.closing:
            self.read_paused = False
            if self.started is not None:  # the time we did not read is not the client's
                now = _now()
                self.started += now - max(self.read_paused_at, self.started)
            self.transport.resume_reading()

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self):
        self.msg_no += 1
        self.head_raw = 0
        self.trailer_raw = None
        self._drop_body()
        self.url, self.headers = b"", {}
        self.fields = self.head_bytes = self.trailer_bytes = self.body_size = 0
        self.started = _now()

    def on_url(self, url: bytes):
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > HEAD_MAX:
            self._refuse(414, f"the request line is too long (more than {HEAD_MAX} bytes)")
            raise _Refused

    def on_header(self, name: bytes, value: bytes):
        if self.head_raw is None:  # a trailer of a chunked body: counted, never taken as a header
            self.trailer_bytes += len(name) + len(value) + 4
            if self.trailer_bytes > HEAD_MAX:
                self._refuse(431, f"the request's trailers are too large (more than {HEAD_MAX} bytes)")
                raise _Refused
            return
        self.head_bytes += len(name) + len(value) + 4
        self.fields += 1
        if self.head_bytes > HEAD_MAX or self.fields > HEADERS_MAX:
            self._refuse(431, f"the request's headers are too large (at most {HEADERS_MAX} fields, "
                              f"{HEAD_MAX} bytes)")
            raise _Refused
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip(" \t")  # a field's value has no surrounding whitespace
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self):
        self.head_raw = None
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.on_loop.limit:
            # Answered from the declared length ("too large"), its body not awaited; then the
            # connection closes, reading and dropping that body for a while (see _close).
            self.oversized = True
            self._complete(keep_alive=False)
        elif self.headers.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() == "1.1":
            self.expect = True
            self._pump()  # sent now, or once the requests before this one are answered

    def on_chunk_header(self):
        self.trailer_raw = 0  # a chunk's data follows, or (the last chunk) the trailer

    def on_body(self, chunk: bytes):
        self.trailer_raw = None
        if self.oversized:
            return
        limit = self.server.on_loop.limit
        if self.body_size < limit:
            piece = chunk[:limit - self.body_size]
            self.body.append(piece)
            self.partial += len(piece)
            self.server.partial_bytes += len(piece)
        self.body_size += len(chunk)
        held = self.server.partial_bytes
        if held > PARTIAL_BUDGET and (self.partial > PARTIAL_SMALL or held > 2 * PARTIAL_BUDGET):
            self._drop_body()
            self._refuse(503, f"the fake holds too many unfinished request bodies ({PARTIAL_BUDGET >> 20} MiB "
                              f"in all): send a body whole, or retry")
            raise _Refused

    def on_message_complete(self):
        self.trailer_raw = None
        if self.oversized:  # answered already
            self.oversized = False
            self.expect = False
            return
        if self.parser.should_upgrade():
            self._upgrade_request()  # its body is still to come: the 100 Continue too, if asked
        else:
            self.expect = False
            self._complete(self.parser.should_keep_alive())

    # -- Upgrade requests: answered as plain HTTP/1.1, then the connection closes ----------------------
    def _upgrade_request(self) -> None:
        """httptools skips the body of an Upgrade request (curl --http2 adds "Upgrade: h2c" to a
        POST): the body is read here, from the bytes after the head."""
        length = self.headers.get("content-length")
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._refuse(400, "bad request: an Upgrade request with a chunked body is not supported")
            raise _Refused
        started = self.started
        req = self._request(keep_alive=False)
        if length and length.isdigit() and int(length) > 0:
            self.upgrade = [req, int(length)]  # the body follows (see _upgraded); timed like any body
            self.started = started
        else:
            self.expect = False
            self._enqueue(req)

    def _upgraded(self, data: bytes, offset: int) -> None:
        if self.upgrade is None:
            self.upgraded = True
        else:
            self._upgrade_body(data[offset:])

    def _upgrade_body(self, chunk: bytes) -> None:
        req, left = self.upgrade
        take = chunk[:left]
        self.body_size += len(take)
        if self.body_size <= self.server.on_loop.limit:
            self.body.append(take)
        left -= len(take)
        if left > 0:
            self.upgrade[1] = left
            return
        self.upgrade, self.upgraded = None, True
        req.body = b"".join(self.body)[:self.server.on_loop.limit]
        self.body, self.expect, self.started = [], False, None
        self._enqueue(req)

    # -- the queue of requests: answered one at a time, in order --------------------------------------
    def _request(self, keep_alive: bool) -> HttpRequest:
        """The request parsed so far (not a valid URL: refused, and _Refused raised)."""
        parser = self.parser
        try:
            url = httptools.parse_url(self.url)
            raw_path, query = unquote_to_bytes(url.path or b"/"), url.query or b""
        except (httptools.HttpParserInvalidURLError, ValueError, TypeError):
            self._refuse(400, "bad request: the request target is not a valid URL")
            raise _Refused from None
        req = HttpRequest(parser.get_method().decode("latin-1"), raw_path, query, self.headers,
                          b"".join(self.body), parser.get_http_version(), keep_alive, self)
        self._drop_body()
        self.headers = {}
        self.started = None
        return req

    def _complete(self, keep_alive: bool) -> None:
        self._enqueue(self._request(keep_alive))

    def _queue_full(self) -> bool:
        return len(self.queue) >= PIPELINE_MAX or self.queued_bytes >= PIPELINE_BYTES

    def _enqueue(self, req: HttpRequest) -> None:
        if self.closing:  # parsed after the answer that closed the connection: never to be served
            return
        self.queue.append(req)
        self.queued_bytes += len(req.body)
        if self._queue_full():
            self._pause_reading()
        self._pump()

    def _pump(self) -> None:
        """Answer the queued requests in order, one at a time, parsing what was held back as the
        queue gets room; then what is owed once they are answered: a refusal, a 100 Continue, the
        close after the client's EOF. A loop, not a recursion (a request answered at once does
        not start the next one itself)."""
        if self.pumping:
            return
        self.pumping = True
        try:
            while not self.closing and not self.write_paused:
                if self.queue and not self.busy:
                    req = self.queue.popleft()
                    self.queued_bytes -= len(req.body)
                    self._serve(req)
                elif self.held and not self.feeding and not self._queue_full():
                    data, self.held = self.held, b""
                    self._feed(data)
                else:
                    break
        finally:
            self.pumping = False
        if self.busy or self.closing or self.write_paused or self.held:
            return
        if not self.queue:
            if self.refusal is not None:
                self._send_refusal()
                return
            if self.eof:
                self._close()
                return
            if self.expect:
                self.expect = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.started = _now()  # the client sends its body from now on
        if not self._queue_full():
            self._resume_reading()

    def _serve(self, req: HttpRequest) -> None:
        self.busy = True
        self.busy_since = _now()
        try:
            resp = self.server.on_loop.api(req, lambda answer: self._answer(req, answer))
            if resp is None:
                environ = req.environ(self.server.on_loop.multiprocess)
                self.server.on_loop.wsgi(environ).add_done_callback(lambda fut: self._wsgi_done(req, fut))
            elif resp is not WAITING:
                self._answer(req, resp)
        except Exception as exc:  # a bug of the fake (or the pool shut down): still an envelope, once
            if self.busy:
                self._send(req, 500, _JSON, _bug(exc))
            else:
                traceback.print_exception(exc)

    def _answer(self, req: HttpRequest, resp: api.ApiResponse) -> None:
        self._send(req, resp.status, api.response_headers(resp), resp.body)

    def _wsgi_done(self, req: HttpRequest, fut: asyncio.Future) -> None:
        try:
            status, headers, body = fut.result()
        except BaseException as exc:  # cancelled (the server is stopping), or a bug
            status, headers, body = 500, _JSON, _bug(exc)
        self._send(req, status, headers, body)

    def _send(self, req: HttpRequest, status: int, headers: list, body: bytes) -> None:
        keep_alive = req.keep_alive and not self.server.stopping
        if not self.closing:
            try:
                data = _response(req, status, headers, body, keep_alive)
            except Exception as exc:  # e.g. a header value that is not latin-1: a bug of the fake
                data = _response(req, 500, _JSON, _bug(exc), keep_alive)
            self.transport.write(data)
            if not keep_alive:  # the client may be sending still (a body over the limit, the next request)
                self._close(linger=True)
        self.busy = False
        self.last_active = now = _now()
        if self.started is not None:  # a request arriving behind this one: the wait is not its own
            self.started += now - max(self.busy_since, self.started)
        self._pump()

    # -- refusing and closing -------------------------------------------------------------------------
    def _refuse(self, status: int, msg: str) -> None:
        """Refuse what the client is sending (malformed, over a limit, too slow): nothing more
        is read; the requests before it are answered, then this refusal, then the connection
        closes. (A parser callback then raises _Refused to stop the parser.)"""
        if self.refusal is None and not self.closing:
            self.refusal = (status, msg)
            self.upgrade = None
            self._pump()

    def _send_refusal(self) -> None:
        status, msg = self.refusal
        body = _envelope_bytes(422 if status == 400 else status, msg)
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"date: %s\r\nconnection: close\r\n\r\n%s"
                             % (status, _REASONS.get(status, b"Unknown"), len(body), _Date.get(), body))
        self._close(linger=True)

    def _close(self, linger: bool = False) -> None:
        """Close after what was written. linger: the client may still be sending (a body we did
        not wait for, bytes after a refusal): our side is shut, and its input read and dropped
        until it closes, or has sent nothing for LINGER seconds once our answer is out. (Closing
        on unread input would make the kernel reset the connection, and the client could lose
        our answer.)"""
        if self.closing:
            return
        self.closing = True
        now = _now()
        self.queue.clear()
        self.queued_bytes = 0
        self.held = b""
        self._drop_body()
        self.out_at = now
        self.drained_at = None if self.transport.get_write_buffer_size() else now
        if linger and not self.eof and self.transport.can_write_eof():
            self.lingering = True
            self.transport.write_eof()
            self.write_paused = False
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
        else:
            self.transport.close()

    def check_time(self, now: float) -> None:
        """Called by the server's sweep: end a connection that stalled."""
        if self.closing:  # still here: our answer is still being sent, or we linger
            size = self.transport.get_write_buffer_size()
            if size:
                if size != self.out_size:  # it reads: give it time
                    self.out_size, self.out_at = size, now
                elif now - self.out_at > CLOSE_GRACE:  # it reads nothing
                    self.transport.abort()
                return
            if self.drained_at is None:
                self.drained_at = now
            if self.lingering:
                # it has been quiet that long, or has kept sending (dropped) for too long
                if now - max(self.drained_at, self.last_input) > LINGER or now - self.drained_at > REQUEST_TIMEOUT:
                    self.lingering = False
                    self.drained_at = now
                    self.transport.close()  # a plain close: what the kernel still holds is delivered
            elif now - self.drained_at > CLOSE_GRACE:
                self.transport.abort()
        elif self.write_paused:
            size = self.transport.get_write_buffer_size()
            if size != self.out_size:  # it reads, slowly: give it time
                self.out_size, self.out_at = size, now
            elif now - self.out_at > REQUEST_TIMEOUT:  # it stopped reading its answers
                self.closing = True
                self.transport.abort()
        elif self.started is not None and not self.busy and not self.read_paused \
                and now - self.started > REQUEST_TIMEOUT:
            self._refuse(408, f"request timeout: a request must arrive within {REQUEST_TIMEOUT:g} s")
        elif self.started is None and not self.busy and not self.queue and not self.held \
                and now - self.last_active > (KEEP_ALIVE if self.sent_any else FIRST_BYTE):
            self._close()


class _Refused(Exception):
    """Raised in a parser callback after a refusal: stops the parser (feed_data then raises
    HttpParserCallbackError)."""


def _response(req: HttpRequest, status: int, headers: list, body: bytes, keep_alive: bool) -> bytes:
    """The bytes of one response: the app's headers but the framing ones, which are ours."""
    out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    length = len(body)
    for name, value in headers:
        lower = name.lower()
        if lower not in _HOP:
            out.append(b"%s: %s\r\n" % (name.encode("latin-1"), str(value).encode("latin-1")))
        elif lower == "content-length" and req.method == "HEAD":
            length = int(value)  # what a GET would carry (the app sent no body)
    if status >= 200 and status not in (204, 304):  # the statuses that have a body
        out.append(b"content-length: %d\r\n" % length)
    else:
        body = b""
    out.append(b"date: %s\r\n" % _Date.get())
    if not keep_alive:
        out.append(b"connection: close\r\n")
    elif req.version == "1.0":
        out.append(b"connection: keep-alive\r\n")
    out.append(b"\r\n")
    if req.method != "HEAD":
        out.append(body)
    return b"".join(out)


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
        self.partial_bytes = 0  # unfinished request bodies held by its connections (PARTIAL_BUDGET)
        self.stopping = False

    async def serve(self, sock, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(self), sock=sock, backlog=2048)
        sweep = loop.create_task(self._sweep())
        try:
            await stop.wait()
        finally:
            self.stopping = True  # answers from now on close their connection
            server.close()  # no new connections; the ones open finish what they started
            deadline = loop.time() + DRAIN_TIMEOUT
            while any(c.busy or c.queue for c in self.connections) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn._close()
            deadline = loop.time() + 1.0  # what they still have to send, sent
            while self.connections and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.transport.abort()
            sweep.cancel()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = _now()
            for conn in list(self.connections):
                try:
                    conn.check_time(now)
                except Exception:  # one connection's trouble must not end the timeouts of all
                    traceback.print_exc()
                    conn.transport.abort()


SWITCH_INTERVAL = 0.0005  # seconds; see run_worker


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
    if svc.scheduler.claims:
        # The callbacks are made by threads of this process (a one-process store, a virtual
        # clock): each of their many short waits (socket, store) hands the GIL to the busy loop
        # thread, and getting it back took up to the switch interval. Measured with the memory
        # store under full API load (bench/lateness_http.py --load): at 5 ms (Python's default)
        # p50 3.2 s, p99 4.0 s late; at 0.5 ms p50 6.5 ms, p99 35-62 ms late.
        sys.setswitchinterval(SWITCH_INTERVAL)

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await HttpServer(on_loop).serve(sock, stop)

    try:
        (uvloop.run if uvloop is not None else asyncio.run)(main())
    finally:
        # Stopping now: a second signal must not cut the last writes short.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        on_loop.close()  # waits for what runs in its threads (a request past the drain is still stored)
        svc.scheduler.stop()
        try:
            svc.journal.flush()
        finally:
            svc.store.close()
            sock.close()
