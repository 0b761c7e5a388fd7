"""Fakes to point the kit at: the in-process app, and any WSGI app served on loopback in a thread."""

from __future__ import annotations

import threading

from .target import is_loopback_url

VERIFY_KEY = "kie-mock-key"  # the fake's documented default key


class LoopbackDelivery:
    """Callback delivery that only ever posts to loopback URLs (a generated callBackUrl never
    leaves the machine); anything else is answered as a refused connection."""

    def __init__(self, timeout: float = 15.0, inner=None):
        if inner is None:
            from mock_server.delivery import HttpDelivery

            inner = HttpDelivery(timeout)
        self.inner = inner

    def __call__(self, url: str, body: bytes, headers: dict):
        if is_loopback_url(url):
            return self.inner(url, body, headers)
        from mock_server.delivery import Attempt

        return Attempt(None, "not sent: the kit's in-process fake (kie-mock verify, the pytest plugin) calls back "
                             "loopback addresses only; run `kie-mock serve` for others", 0.0)


def fake_config(**overrides):
    """The in-process fake as `verify` runs it: instant stages, no rate limit, ample credits."""
    from mock_server.config import Config

    base = dict(api_keys={VERIFY_KEY: 10**9}, rate_limit=0, instant=True, retry_delays=(0.05, 0.1, 0.2),
                callback_timeout=5.0)
    base.update(overrides)
    return Config(**base)


def make_fake(config=None, *, deliver=None, **kw):
    from mock_server.app import create_app

    return create_app(config or fake_config(), deliver=deliver or LoopbackDelivery(), **kw)


def stop_app(app) -> None:
    """Stop the fake's scheduler thread (if `app` is, or wraps, a kie-mock app)."""
    seen = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        ext = getattr(app, "extensions", None)
        if ext and "kie_mock" in ext:
            ext["kie_mock"].scheduler.stop()
            return
        app = getattr(app, "app", None) or getattr(app, "wrapped", None)


class ServerThread:
    """Serve a WSGI app on 127.0.0.1 (a free port) in a daemon thread.

        with ServerThread(make_fake()) as url: ...
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # no line per request
                pass

        self.app = app
        self.server = make_server(host, port, app, threaded=True, request_handler=Quiet)
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="kie-mock-test-server", daemon=True)

    def start(self) -> "ServerThread":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        stop_app(self.app)

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *exc):
        self.stop()
