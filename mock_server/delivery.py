"""Callback delivery over HTTP, and the opt-in HMAC signature.

Injected into the scheduler, so tests can observe or replace it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools


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


class _Answer:
    """httptools callbacks for one response: done once the message is complete."""

    __slots__ = ("parser", "head", "done", "keep", "framed")

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.head = self.done = self.keep = self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True  # else the body runs to the end of the connection

    def on_headers_complete(self) -> None:
        self.head = True
        self.keep = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.done = True


class HttpDelivery:
    """POST a JSON body; any answer that is not 2xx within the timeout is a failure.

    HTTP/1.1 with keep-alive connections per scheme, host and port (at most `maxsize` idle ones
    kept each), the answer parsed by httptools (C); TLS verified with the system's CAs. A kept
    connection the receiver has closed meanwhile is noticed before it is used (readable while
    idle) and replaced. Measured against a local receiver: 140 us of CPU per callback, against
    280-330 us with urllib3 (which was 43 % of the scheduler process's Python time: its header
    parsing goes through the email package)."""

    def __init__(self, timeout: float = 15.0, maxsize: int = 8):
        self.timeout = timeout
        self.maxsize = maxsize
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def __call__(self, url: str, body: bytes, headers: dict) -> Attempt:
        started = time.monotonic()
        try:
            key, path, host_header = _target(url)
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
        except (OSError, ValueError, httptools.HttpParserError) as exc:
            sock.close()
            return Attempt(None, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        if keep:
            self._give(key, sock)
        else:
            sock.close()
        return Attempt(status, None, time.monotonic() - started)

    def _connect(self, key: tuple, deadline: float):
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.001))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(self, sock, request: bytes, deadline: float) -> tuple[int, bool]:
        """Send the request, read the whole answer: (status, whether the connection may be kept)."""
        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("deadline")
            return left

        sock.settimeout(remaining())
        sock.sendall(request)
        answer = _Answer()
        while not answer.done:
            sock.settimeout(remaining())
            data = sock.recv(65536)
            if not data:  # closed: complete only if its body runs to the end of the connection
                if answer.head and not answer.framed:
                    return answer.parser.get_status_code(), False
                raise ConnectionError("the receiver closed the connection before its answer was complete")
            answer.parser.feed_data(data)
        return answer.parser.get_status_code(), answer.keep

    def _take(self, key: tuple):
        while True:
            with self._lock:
                idle = self._idle.get(key)
                sock = idle.pop() if idle else None
            if sock is None or not _dropped(sock):
                return sock
            sock.close()

    def _give(self, key: tuple, sock) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.maxsize:
                idle.append(sock)
                return
        sock.close()


def _target(url: str) -> tuple[tuple, str, str]:
    """((scheme, host, port), path with query, Host header) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
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
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
