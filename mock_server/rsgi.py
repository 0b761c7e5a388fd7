"""The fake on granian's RSGI interface (`KIE_MOCK_HTTP_SERVER=granian KIE_MOCK_HTTP_INTERFACE=rsgi`):
the same on-loop API as the built-in server (onloop.py: the API endpoints on the worker's event
loop, the rest in a thread pool through the Flask WSGI app), behind granian's HTTP instead.

Why on a loop rather than granian's WSGI threads: with more than one thread they fight over the
GIL (measured on 2 cores, memory store, POST upload-cover: 10,900 req/s with one thread, 7,900
with two, 5,500 with four), and one thread alone would let a single slow request stall every
other client.

Bodies are read as they arrive (a slow client holds no thread) and at most `max_body_bytes`
plus one byte are kept: the handlers then answer "too large" in the envelope.
"""

from __future__ import annotations

import asyncio
import functools
import traceback

import orjson

from . import api
from .onloop import WAITING, LoopRequest, OnLoop, resolve, wsgi_environ



class ScopeRequest(LoopRequest):
    """An API request read straight from the RSGI scope and body (no WSGI environ is built)."""

    def __init__(self, scope, body: bytes):
        self.scope, self.body = scope, body
        self.headers = scope.headers
        self.method, self.path = scope.method, scope.path  # granian percent-decodes the path (UTF-8)
        self.key_masked = None
        self.view = None

    def query_string(self) -> str:
        return self.scope.query_string

    def scheme(self) -> str:
        return self.scope.scheme


def _environ(scope, body: bytes, multiprocess: bool) -> dict:
    host, _, port = (scope.server or "").rpartition(":")
    client_host, _, client_port = (scope.client or "").rpartition(":")
    return wsgi_environ(scope.method, scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
                        scope.query_string, (host, port), (client_host, client_port), scope.http_version,
                        scope.scheme, body, scope.headers.items(), multiprocess)


class RsgiApp:
    def __init__(self, svc, wsgi_app, multiprocess: bool = False):
        self.on_loop = OnLoop(svc, wsgi_app, multiprocess)
        self.svc, self.batcher, self.limit = svc, self.on_loop.batcher, self.on_loop.limit

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
        answered = asyncio.get_running_loop().create_future()
        resp = self.on_loop.api(req, functools.partial(resolve, answered))
        if resp is not None:
            if resp is WAITING:  # a cover waiting for its batched write
                resp = await answered
            proto.response_bytes(resp.status, api.response_headers(resp), resp.body)
            return
        environ = _environ(scope, body, self.on_loop.multiprocess)
        status, headers, out = await self.on_loop.wsgi(environ)
        if environ["REQUEST_METHOD"] == "HEAD":
            out = b""
        proto.response_bytes(status, headers, out)
