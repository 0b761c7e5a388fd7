"""A local callback receiver: an http.server in a thread on loopback that records every POST.

Give each submission its own URL (`receiver.url(token)`), so its callbacks can be found even
when a payload names the task wrongly. When the target is remote, pass `public_url` (a tunnel
to this port) and the URLs handed out use it instead of the loopback address.

    with CallbackReceiver() as rx:
        url = rx.url("t1")
        ... submit with callBackUrl=url ...
        calls = rx.wait_for_stage("t1", "complete", timeout=30)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

FINAL = ("complete", "error")


class _Server(ThreadingHTTPServer):
    # The fake delivers with 8 threads, and a test may fire many covers at once: the default
    # listen backlog (5) reset connections beyond it.
    request_queue_size = 128
    daemon_threads = True


@dataclass
class Callback:
    token: str  # the last path segment of the URL it was posted to
    path: str
    headers: dict[str, str]
    content: bytes
    at: float  # time.time() when it arrived
    status: int  # what the receiver answered

    @property
    def json(self):
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def stage(self) -> str | None:
        """data.callbackType, or None when the payload has none."""
        body = self.json
        data = body.get("data") if isinstance(body, dict) else None
        return data.get("callbackType") if isinstance(data, dict) else None

    @property
    def task_id(self) -> str | None:
        body = self.json
        data = body.get("data") if isinstance(body, dict) else None
        return data.get("task_id") if isinstance(data, dict) else None


class CallbackReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, public_url: str | None = None,
                 prefix: str = "/cb/"):
        self.host, self.port, self.public_url, self.prefix = host, port, public_url, prefix
        self.calls: list[Callback] = []
        self.errors: list[BaseException] = []
        self.answers: dict[str, list[int]] = {}  # token -> statuses to answer first (then 200)
        self.fail_first = 0  # answer 500 to this many more callbacks, whatever their token
        self.on_call: Callable[[Callback], None] | None = None
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> "CallbackReceiver":
        if self._server:
            return self
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one 40 ms delayed-ACK stall per callback otherwise

            def do_POST(self):  # noqa: N802 (http.server's naming)
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    content = self.rfile.read(length) if length else b""
                    token = self.path.rstrip("/").rsplit("/", 1)[-1]
                    with receiver._cond:
                        queue = receiver.answers.get(token)
                        if queue:
                            status = queue.pop(0)
                        elif receiver.fail_first > 0:  # any path: `kie-mock receive --fail N`
                            receiver.fail_first -= 1
                            status = 500
                        else:
                            status = 200
                    call = Callback(token, self.path, {k: v for k, v in self.headers.items()}, content,
                                    time.time(), status)
                    with receiver._cond:
                        receiver.calls.append(call)
                        receiver._cond.notify_all()
                    if receiver.on_call:
                        receiver.on_call(call)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    payload = b'{"ok":true}' if status < 300 else b'{"ok":false}'
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except BaseException as exc:  # kept, and raised in the test by check()
                    receiver.errors.append(exc)
                    raise

            def log_message(self, *args):  # quiet
                pass

        self._server = _Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="callback-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- addresses ------------------------------------------------------------------------------------
    @property
    def local_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, token: str = "default") -> str:
        base = (self.public_url or self.local_url).rstrip("/")
        return f"{base}{self.prefix}{token}"

    # -- what arrived ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the first error the server thread met (like pytest-httpserver's check())."""
        if self.errors:
            raise self.errors[0]

    def clear(self) -> None:
        with self._cond:
            self.calls.clear()
            self.answers.clear()

    def fail_next(self, token: str, *statuses: int) -> None:
        """Answer the next callbacks posted to `token` with these statuses (e.g. 500), then 200."""
        with self._cond:
            self.answers.setdefault(token, []).extend(statuses)

    def for_token(self, token: str) -> list[Callback]:
        with self._cond:
            return [c for c in self.calls if c.token == token]

    def for_task(self, task_id: str) -> list[Callback]:
        with self._cond:
            return [c for c in self.calls if c.task_id == task_id]

    def stages(self, token: str) -> list[str | None]:
        return [c.stage for c in self.for_token(token) if c.status < 300]

    def wait_for(self, predicate: Callable[[list[Callback]], bool], timeout: float = 10.0) -> bool:
        """Wait until predicate(all calls so far) is true; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.calls)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def wait_for_stage(self, token: str, stage: str | tuple[str, ...] = FINAL, timeout: float = 10.0,
                       settle: float = 0.0) -> list[Callback]:
        """The token's callbacks once one of `stage` arrived (or whatever came by the timeout);
        `settle` seconds more are waited for stragglers (duplicates, late stages)."""
        wanted = (stage,) if isinstance(stage, str) else tuple(stage)
        self.wait_for(lambda calls: any(c.token == token and c.stage in wanted and c.status < 300 for c in calls),
                      timeout)
        if settle:
            time.sleep(settle)
        return self.for_token(token)

    def wait_for_count(self, token: str, n: int, timeout: float = 10.0) -> list[Callback]:
        self.wait_for(lambda calls: sum(c.token == token for c in calls) >= n, timeout)
        return self.for_token(token)
