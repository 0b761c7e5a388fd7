"""Callback delivery over HTTP, and the opt-in HMAC signature.

Injected into the scheduler, so tests can observe or replace it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from .netpolicy import BLOCKED, Blocked, Policy


@dataclass(frozen=True)
class Attempt:
    status: int | None  # HTTP status, None when no answer came
    error: str | None  # "connection refused", "timeout after 15s", ...
    duration: float  # seconds

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def sign(hmac_key: str, task_id: str, timestamp: int) -> str:
    """X-Webhook-Signature: base64(HMAC-SHA256(key, taskId + "." + timestamp))."""
    mac = hmac.new(hmac_key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def signed_headers(hmac_key: str | None, task_id: str, now: float) -> dict:
    if not hmac_key:
        return {}
    ts = int(now)
    return {"X-Webhook-Timestamp": str(ts), "X-Webhook-Signature": sign(hmac_key, task_id, ts)}


RESOLVERS = 4  # names being resolved at once, at most (each in a daemon thread of its own)
_resolving = threading.BoundedSemaphore(RESOLVERS)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("deadline")
    return left


def _resolve(host: str, port: int, deadline: float) -> list:
    """getaddrinfo for a TCP connection, given up at the deadline (socket.timeout). A literal
    address is not looked up. A lookup that outlives its deadline keeps its thread until the
    resolver answers; with RESOLVERS so held, later names wait for one and time out the same
    way. The threads are daemons: a lookup stuck on an unreachable nameserver never holds up
    the process's exit."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    if not _resolving.acquire(timeout=_left(deadline)):
        raise socket.timeout("waiting for a resolver thread")
    answer: list = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller
            answer.append(exc)
        finally:
            _resolving.release()
            done.set()
    try:
        threading.Thread(target=lookup, name="kie-mock-resolve", daemon=True).start()
    except BaseException:
        _resolving.release()
        raise
    if not done.wait(_left(deadline)):
        raise socket.timeout("resolving the name")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return answer[0]


def resolve_allowed(policy: Policy, host: str, port: int, deadline: float, what: str) -> list:
    """`_resolve`, keeping only the addresses `policy` allows; Blocked (before any lookup) for a
    host it refuses outright, or when none is left. The caller connects to these, so what was
    checked is what is reached."""
    verdict = policy.verdict(host)
    if verdict is False:
        raise Blocked(BLOCKED.format(what=what))
    infos = _resolve(host, port, deadline)
    if verdict is None:
        infos = policy.pick(infos)
        if not infos:
            raise Blocked(BLOCKED.format(what=what) + f" ({host} resolves to no allowed address)")
    return infos


HEAD_MAX = 65536  # bytes of an answer's status line and headers, at most
IDLE_HOSTS = 256  # receivers (scheme, host, port) with kept connections, at most
IDLE_MAX_AGE = 60.0  # seconds a kept connection may wait unused


class _Answer:
    """httptools callbacks for one exchange: the first final (non-1xx) answer's status, whether
    the connection may be kept, and whether anything came after that answer."""

    __slots__ = ("parser", "head", "done", "keep", "framed", "status", "extra")

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.head = self.done = self.keep = self.framed = self.extra = False
        self.status = None

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # bytes after the answer: the connection is not reused
        self.head = self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True  # else the body runs to the end of the connection

    def on_headers_complete(self) -> None:
        self.head = True
        self.keep = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status < 200 and not self.done:  # 1xx (100 Continue, 103) come before the answer
            self.done, self.status = True, status


class HttpDelivery:
    """POST a JSON body; any answer that is not 2xx within the timeout is a failure.

    HTTP/1.1 with keep-alive connections per scheme, host and port (at most `maxsize` idle ones
    kept each), the answer parsed by httptools (C); TLS verified with the system's CAs. A kept
    connection the receiver has closed meanwhile is noticed before it is used (readable while
    idle) and replaced. Measured against a local receiver: 140 us of CPU per callback, against
    280-330 us with urllib3 (which was 43 % of the scheduler process's Python time: its header
    parsing goes through the email package)."""

    def __init__(self, timeout: float = 15.0, maxsize: int = 8, allow: tuple[str, ...] | None = None):
        self.timeout = timeout
        self.maxsize = maxsize
        self.policy = Policy(allow)  # the outbound allowlist, applied to the addresses connected to
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def __call__(self, url: str, body: bytes, headers: dict) -> Attempt:
        started = time.monotonic()
        try:
            key, path, host_header = split_target(url)
            head = [f"POST {path} HTTP/1.1", f"Host: {host_header}", "Content-Type: application/json",
                    "User-Agent: kie-mock-callback/1", f"Content-Length: {len(body)}"]
            for name, value in headers.items():
                if any(c in f"{name}{value}" for c in "\r\n"):
                    raise ValueError(f"header {name!r}: a line break")
                head.append(f"{name}: {value}")
            request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        except (ValueError, UnicodeError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        deadline = started + self.timeout
        sock = self._take(key)
        try:
            if sock is None:
                sock = self._connect(key, deadline)
        except Blocked as exc:
            return Attempt(None, str(exc), time.monotonic() - started)
        except ConnectionRefusedError:
            return Attempt(None, "connection refused", time.monotonic() - started)
        except (socket.timeout, TimeoutError):
            return Attempt(None, f"timeout after {self.timeout:g}s", time.monotonic() - started)
        except (OSError, ValueError) as exc:
            return Attempt(None, f"cannot connect: {exc}", time.monotonic() - started)
        try:
            status, keep = self._exchange(sock, request, deadline)
        except (socket.timeout, TimeoutError):
            sock.close()
            return Attempt(None, f"timeout after {self.timeout:g}s", time.monotonic() - started)
        except Exception as exc:  # whatever the receiver sent, a failed attempt (never the scheduler's error)
            sock.close()
            return Attempt(None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        if keep:
            self._give(key, sock)
        else:
            sock.close()
        return Attempt(status, None, time.monotonic() - started)

    def _connect(self, key: tuple, deadline: float):
        """A connection to the receiver, made within the deadline: the name's resolution included
        (in a resolver thread: getaddrinfo has no timeout of its own), then each of its addresses
        in turn (with an allowlist: each of those it allows)."""
        scheme, host, port = key
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, addr in resolve_allowed(self.policy, host, port, deadline, "callBackUrl"):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(_left(deadline))
                sock.connect(addr)
                break
            except OSError as exc:
                sock.close()
                if isinstance(exc, (socket.timeout, TimeoutError)):
                    raise
                error = exc
        else:
            raise error
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                sock.settimeout(_left(deadline))  # the handshake's share of the deadline
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(self, sock, request: bytes, deadline: float) -> tuple[int, bool]:
        """Send the request, read the whole answer: (status, whether the connection may be kept)."""
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        answer, head_bytes = _Answer(), 0
        while not answer.done:
            sock.settimeout(_left(deadline))
            data = sock.recv(65536)
            if not data:  # closed: complete only if its body runs to the end of the connection
                if answer.head and not answer.framed:
                    return answer.parser.get_status_code(), False
                raise ConnectionError("the receiver closed the connection before its answer was complete")
            if not answer.head:
                head_bytes += len(data)
                if head_bytes > HEAD_MAX + 65536:
                    raise ValueError(f"an answer head over {HEAD_MAX} bytes")
            try:
                answer.parser.feed_data(data)
            except httptools.HttpParserUpgrade:  # 101 Switching Protocols: an answer, not a 2xx
                return 101, False
            except httptools.HttpParserError:
                if answer.done:  # bytes after the answer: it stands, the connection goes
                    return answer.status, False
                raise
        return answer.status, answer.keep and not answer.extra

    def _take(self, key: tuple):
        while True:
            with self._lock:
                idle = self._idle.get(key)
                sock, since = idle.pop() if idle else (None, 0.0)
            if sock is None or (time.monotonic() - since < IDLE_MAX_AGE and not _dropped(sock)):
                return sock
            sock.close()

    def _give(self, key: tuple, sock) -> None:
        """Keep it for the next callback to the same receiver: at most `maxsize` per receiver,
        IDLE_HOSTS receivers (the longest unused go), none unused for IDLE_MAX_AGE."""
        now, gone = time.monotonic(), []
        with self._lock:
            idle = self._idle.pop(key, [])
            self._idle[key] = idle  # the most recently used last
            if len(idle) < self.maxsize:
                idle.append((sock, now))
                sock = None
            while len(self._idle) > IDLE_HOSTS:
                gone += self._idle.pop(next(iter(self._idle)))
            for other in list(self._idle):
                kept = [(c, t) for c, t in self._idle[other] if now - t < IDLE_MAX_AGE]
                gone += [(c, t) for c, t in self._idle[other] if now - t >= IDLE_MAX_AGE]
                if kept:
                    self._idle[other] = kept
                else:
                    del self._idle[other]
        for c, _ in gone:
            c.close()
        if sock is not None:
            sock.close()


def split_target(url: str) -> tuple[tuple, str, str]:
    """((scheme, host, port), path with query, Host header) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port if parts.port is not None else (443 if scheme == "https" else 80)
    if port == 0:
        raise ValueError(f"port 0 in {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path or c in parts.netloc for c in " \r\n"):
        raise ValueError(f"a space or line break in {url!r}")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
    return (scheme, host, port), path, shown if default else f"{shown}:{port}"


def _dropped(sock) -> bool:
    """An idle kept connection that is readable has been closed by the receiver (or sent
    something unasked): not to be used again."""
    try:  # poll, not select: a descriptor numbered past 1023 (a busy server) is fine
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
