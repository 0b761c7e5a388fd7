"""A thin client over any target: the in-process WSGI app or an HTTP base URL.

Every suite talks to the target through `Target.call`, so the same check code runs against
the in-process fake (werkzeug's test client, no sockets), a running fake, or the real service.
The client also keeps the run polite and its records safe:

- pacing: at most `rate` requests per `window` seconds to the API (the real limit is 20 new
  tasks per 10 s per account; we stay under it for every request to a remote target);
- 429: wait what `Retry-After` says (or the window) and try again, a few times;
- recording: every exchange can go to a `Recorder`, with the API key redacted.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import urllib3

REDACTED = "<redacted>"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    content: bytes
    elapsed: float = 0.0
    _json: Any = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    def json(self):
        """The body as JSON, or None when it is not JSON."""
        if not self._parsed:
            self._parsed = True
            try:
                self._json = jsonlib.loads(self.content) if self.content else None
            except (ValueError, UnicodeDecodeError):
                self._json = None
        return self._json

    @property
    def code(self):
        """The envelope's code (None when the body is not an envelope)."""
        body = self.json()
        return body.get("code") if isinstance(body, dict) else None

    @property
    def data(self):
        body = self.json()
        return body.get("data") if isinstance(body, dict) else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def describe(self) -> str:
        body = self.json()
        if isinstance(body, dict) and "code" in body:
            msg = body.get("msg")
            shown = f"code {body.get('code')}" + (f' "{str(msg)[:70]}"' if msg not in (None, "") else "")
            if body.get("code") == 200 and isinstance(body.get("data"), dict) and "taskId" in body["data"]:
                shown += " taskId"
            return f"HTTP {self.status}, {shown}"
        if body is not None:
            return f"HTTP {self.status}, JSON {jsonlib.dumps(body)[:80]}"
        return f"HTTP {self.status}, {len(self.content)} bytes {self.header('content-type') or ''}".rstrip()


@dataclass
class Exchange:
    method: str
    path: str  # path (no query) on the target, or an absolute URL for downloads
    query: dict
    headers: dict
    body: Any  # the JSON sent, raw bytes/str, or None
    reply: Reply
    label: str = ""

    def describe(self, limit: int = 150) -> str:
        """'POST /api/... {model: V3_5, title: <81 chars>}' for the disagreement table."""
        q = f"?{urlencode(self.query)}" if self.query else ""
        auth = self.headers.get("Authorization")
        who = "" if auth not in (None,) else " (no Authorization)"
        return f"{self.method} {self.path}{q}{who} {summarize(self.body, limit)}".rstrip()


def summarize(body, limit: int = 110) -> str:
    if body is None:
        return ""
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return repr(text[:40]) + ("..." if len(text) > 40 else "")
    if not isinstance(body, dict):
        return jsonlib.dumps(body)[:limit]
    parts = []
    for k, v in body.items():
        if k in ("uploadUrl", "callBackUrl") and isinstance(v, str):
            if not _good_url(v):  # the run's own URLs are noise; a URL the rule is about is shown
                parts.append(f"{k}: {jsonlib.dumps(v[:60] + ('...' if len(v) > 60 else ''))}")
            continue
        if isinstance(v, str) and len(v) > 16:
            parts.append(f"{k}: <{len(v)} chars>")
        else:
            parts.append(f"{k}: {jsonlib.dumps(v)}")
    missing = [k for k in ("uploadUrl", "callBackUrl") if k not in body]
    parts += [f"no {k}" for k in missing]
    text = "{" + ", ".join(parts) + "}"
    return text if len(text) <= limit else text[: limit - 4] + "...}"


def _good_url(url: str) -> bool:
    """A URL the request schema accepts (its pattern, the contract's own words)."""
    return _url_pattern().search(url) is not None


@lru_cache(maxsize=1)
def _url_pattern() -> re.Pattern:
    from . import schemas as S

    return re.compile(S.branches()[0].properties["uploadUrl"]["pattern"])


# -- transports ---------------------------------------------------------------------------------------
class WsgiTransport:
    """The app in this process, through werkzeug's test client (no sockets)."""

    base_url = "http://localhost"

    def __init__(self, app):
        from werkzeug.test import Client

        self.app = app
        self.client = Client(app)

    def send(self, method: str, path: str, query: dict, headers: dict, data: bytes | None) -> Reply:
        started = time.monotonic()
        r = self.client.open(path, method=method, query_string=query or None, headers=headers, data=data)
        content = r.get_data()
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, content,
                     time.monotonic() - started)


class HttpTransport:
    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.pool = urllib3.PoolManager(num_pools=8, maxsize=4, retries=False,
                                        timeout=urllib3.Timeout(connect=10, read=timeout))

    def send(self, method: str, path: str, query: dict, headers: dict, data: bytes | None) -> Reply:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        started = time.monotonic()
        try:
            r = self.pool.request(method, url, body=data, headers=headers, preload_content=True, redirect=False)
        except urllib3.exceptions.ReadTimeoutError:
            raise TimeoutError(f"{method} {path}: no answer within {self.timeout:g} s "
                               f"(--request-timeout)") from None
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.data, time.monotonic() - started)


def is_loopback_url(url: str) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1); a name such as 127.example.com is not."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- pacing ------------------------------------------------------------------------------------------------
class Pacer:
    """At most `rate` sends per sliding `window` seconds (blocks until a slot frees)."""

    def __init__(self, rate: int, window: float, sleep: Callable[[float], None] = time.sleep):
        self.rate, self.window, self.sleep = rate, window, sleep
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()
        self.waited = 0.0

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            while self.sent and now - self.sent[0] >= self.window:
                self.sent.popleft()
            if len(self.sent) >= self.rate:
                pause = self.window - (now - self.sent[0]) + 0.01
                self.waited += pause
                self.sleep(pause)
                self.sent.popleft()
            self.sent.append(time.monotonic())


# -- recording ------------------------------------------------------------------------------------------------
class Recorder:
    """Collects exchanges and callbacks (keys redacted); `save(dir)` writes them as JSON lines."""

    def __init__(self, secrets: list[str]):
        self.secrets = [s for s in secrets if s]
        self.exchanges: list[dict] = []
        self.callbacks: list[dict] = []
        self.lock = threading.Lock()

    def redact(self, value):
        if isinstance(value, str):
            for s in self.secrets:
                value = value.replace(s, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value

    def add(self, ex: Exchange) -> None:
        reply = ex.reply
        body = ex.body.decode("utf-8", "replace") if isinstance(ex.body, bytes) else ex.body
        parsed = reply.json()
        record = {
            "check": ex.label, "method": ex.method, "path": ex.path, "query": ex.query,
            "headers": {k: v for k, v in ex.headers.items() if k.lower() in ("authorization", "content-type", "prefer")},
            "body": body,
            "response": {"status": reply.status,
                         "headers": {k: v for k, v in reply.headers.items()
                                     if k in ("content-type", "retry-after", "content-length")},
                         "json": parsed,
                         "size": len(reply.content) if parsed is None else None},
        }
        with self.lock:
            self.exchanges.append(self.redact(record))

    def add_callback(self, label: str, task_id: str, path: str, headers: dict, body) -> None:
        keep = {k: v for k, v in headers.items() if k.lower().startswith(("content-type", "x-webhook"))}
        with self.lock:
            self.callbacks.append(self.redact({"check": label, "task_id": task_id, "path": path,
                                               "headers": keep, "json": body}))

    def save(self, directory, meta: dict) -> None:
        from pathlib import Path

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with self.lock:
            (d / "meta.json").write_text(jsonlib.dumps(self.redact(meta), indent=2) + "\n")
            (d / "exchanges.jsonl").write_text("".join(jsonlib.dumps(x) + "\n" for x in self.exchanges))
            (d / "callbacks.jsonl").write_text("".join(jsonlib.dumps(x) + "\n" for x in self.callbacks))


# -- the target -------------------------------------------------------------------------------------------------
class Target:
    """Where the suites send requests. `call` returns an Exchange; nothing here judges it."""

    def __init__(self, transport, api_key: str, *, pacer: Pacer | None = None, recorder: Recorder | None = None,
                 retry_429: int = 3, max_backoff: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 name: str = "", retry_transient: int = 0):
        self.transport = transport
        self.api_key = api_key
        self.pacer = pacer
        self.recorder = recorder
        self.retry_429 = retry_429
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.name = name or transport.base_url
        self.requests = 0
        self.backoffs: list[float] = []
        self.limited: list[Exchange] = []  # the 429 answers it backed off on (the runner judges them)
        self.retry_transient = retry_transient  # tries more after a 5xx or a dropped connection (a real target)
        self.transients: list[str] = []  # what was retried: "POST /path: HTTP 500" ...
        self._downloads = urllib3.PoolManager(num_pools=4, retries=False, timeout=urllib3.Timeout(total=60))

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    @property
    def in_process(self) -> bool:
        return isinstance(self.transport, WsgiTransport)

    @property
    def remote(self) -> bool:
        return not self.in_process and not is_loopback_url(self.base_url)

    def auth_header(self) -> str:
        return f"Bearer {self.api_key}"

    def call(self, method: str, path: str, *, json: Any = ..., data: bytes | str | None = None,
             params: dict | None = None, headers: dict | None = None, auth: str | None | type(...) = ...,
             label: str = "", retry_429: bool = True, idempotent: bool | None = None) -> Exchange:
        """Send one request. `auth=...` sends our key, None sends none, a string is sent as is.
        `idempotent` (default: a GET): sending it again cannot create a second task, so a 5xx
        answer or a dropped connection is tried again (up to `retry_transient` times, after 1, 2
        s): what a flaky real service does once is not a contract break. A cover the contract
        accepts is never sent twice."""
        h = {"Accept": "application/json"}
        if auth is ...:
            h["Authorization"] = self.auth_header()
        elif auth is not None:
            h["Authorization"] = auth
        body_sent: Any = None
        raw: bytes | None = None
        if json is not ...:
            raw = jsonlib.dumps(json, ensure_ascii=False).encode()
            h["Content-Type"] = "application/json"
            body_sent = json
        elif data is not None:
            raw = data.encode() if isinstance(data, str) else data
            body_sent = data
        h.update(headers or {})
        h = {k: v for k, v in h.items() if v is not None}
        attempts = transient = 0
        retry = self.retry_transient if (method == "GET" if idempotent is None else idempotent) else 0
        while True:
            if self.pacer and path.startswith("/api/"):
                self.pacer.wait()
            try:
                reply = self.transport.send(method, path, dict(params or {}), h, raw)
            except TimeoutError:
                raise
            except Exception as exc:  # a reset, a refused connection: the request may be tried again
                self.requests += 1
                if transient >= retry:
                    raise
                transient += 1
                self.transients.append(f"{method} {path}: {type(exc).__name__}")
                self.sleep(float(transient))
                continue
            self.requests += 1
            ex = Exchange(method, path, dict(params or {}), h, body_sent, reply, label)
            if (reply.status >= 500 or reply.code == 500) and transient < retry:
                transient += 1
                self.transients.append(f"{method} {path}: HTTP {reply.status}, code {reply.code}")
                self.sleep(float(transient))
                continue
            if self.recorder:
                self.recorder.add(ex)
            limited = reply.status == 429 or reply.code == 429
            if not (limited and retry_429 and attempts < self.retry_429):
                return ex
            attempts += 1
            self.limited.append(ex)
            self.sleep(self._backoff(reply, attempts))

    def _backoff(self, reply: Reply, attempt: int) -> float:
        raw = reply.header("retry-after")
        try:
            wait = float(raw) if raw is not None else 10.0 * attempt
        except ValueError:
            wait = 10.0 * attempt
        wait = min(max(wait, 0.5), self.max_backoff)
        self.backoffs.append(wait)
        return wait

    def fetch(self, url: str, *, method: str = "GET", headers: dict | None = None, label: str = "") -> Exchange:
        """Download a file URL the target handed out (through the app when it points at the target)."""
        base = self.transport.base_url.rstrip("/")
        parts = urlsplit(url)
        if self.in_process and parts.hostname in ("localhost", None) or url.startswith(base + "/"):
            path = parts.path
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            reply = self.transport.send(method, path, query, dict(headers or {}), None)
        else:
            started = time.monotonic()
            r = self._downloads.request(method, url, headers=headers or {}, preload_content=True)
            reply = Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.data, time.monotonic() - started)
        self.requests += 1
        ex = Exchange(method, url, {}, dict(headers or {}), None, reply, label)
        if self.recorder:
            self.recorder.add(ex)
        return ex
