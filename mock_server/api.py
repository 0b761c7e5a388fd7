"""The API's HTTP face (thin): parse, call the service, render the envelope.

The three endpoints are plain functions of a WSGI environ (`ApiRequest`) returning an
`ApiResponse`. `FastPath` serves them straight from WSGI, before Flask (the hot path:
Flask's request machinery costs more than the fake's own work); the Flask Blueprint
declares the same routes so 404 / 405 / OPTIONS answers stay Flask's, and serves them
when the fast path is off (`create_app(..., fast_path=False)`).
"""

from __future__ import annotations

import ipaddress
import re
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson
from flask import Blueprint, Response, current_app, request
from werkzeug.wsgi import get_input_stream

from . import faults
from .envelope import http_status
from .rules import Rejection
from .config import mask_key
from .stores import API_OUTAGE, unavailable
from .service import Accepted, CoverDraft, Service, WouldWait

bp = Blueprint("api", __name__)

JSON_TYPES = ("application/json",)
# A Host header the file URLs may be built on: a name (RFC 3986's reg-name, its unreserved
# characters: "kie_mock", a compose service, has an underscore) or an IPv4 address, or an IPv6
# address in brackets; an optional port.
_HOST = re.compile(r"^[A-Za-z0-9._~\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def _last(value: str | None) -> str:
    """The last of a header's comma-separated values (what the proxy nearest to the fake set;
    the ones before it came from further away, the client included), stripped."""
    return value.rsplit(",", 1)[-1].strip() if value else ""


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


@dataclass
class ApiResponse:
    code: int
    body: bytes
    status: int
    headers: list = field(default_factory=list)
    task_id: str | None = None  # the task it made or was asked about (the request journal's task_id)
    msg: str = "success"


class MustBlock(Exception):
    """Raised by a handler running on an event loop (`inline`) that would have to wait (a rate
    window whose write lock is held elsewhere), before it changed any state: the caller runs it
    again in a thread."""


class Delay(Exception):
    """Raised by a handler running on an event loop (`inline`) for an injected latency, before
    it changed any state: the caller runs it again (`ApiRequest.delayed`) `seconds` later,
    without holding a thread meanwhile."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.seconds = seconds


class ApiRequest:
    """What the handlers read of a request, straight from the WSGI environ."""

    inline = False  # True on an event loop: a handler that would wait raises MustBlock (or Delay) instead
    timed = False  # served by an event-loop server (in its pool or not): an injected latency raises Delay
    delayed = False  # its injected latency was served: run again, it does not wait again

    def __init__(self, environ: dict):
        self.environ = environ
        self.method, self.path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        self.key_masked: str | None = None
        self.view = None  # what the prelude read of the store (service.RequestView)
        self.body_text: bytes | None = None  # the JSON body as sent, once json_body read it

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def query_string(self) -> str:
        return self.environ.get("QUERY_STRING", "")

    def scheme(self) -> str:
        return self.environ.get("wsgi.url_scheme", "http")

    def query(self, name: str) -> str | None:
        values = parse_qs(self.query_string(), keep_blank_values=True).get(name)
        return values[0] if values else None

    def host_url(self, fallback: str) -> str:
        """scheme://host/ the client reached (the file URLs of its task start with it): a proxy's
        X-Forwarded-Host and X-Forwarded-Proto (their last value: the nearest proxy's) when it sets
        them, else the Host header and the connection's scheme. A host that is not a plain
        host[:port] is not trusted (`fallback`), nor a scheme other than http and https."""
        host = _last(self.header("X-Forwarded-Host")) or self.header("Host") or ""
        if not _HOST.match(host) or (host.startswith("[") and not _ipv6(host[1:host.index("]")])):
            return fallback
        scheme = _last(self.header("X-Forwarded-Proto")).lower()
        return f"{scheme if scheme in ('http', 'https') else self.scheme()}://{host}/"

    def content_type(self) -> str:
        return self.environ.get("CONTENT_TYPE") or ""

    def content_length(self) -> str | None:
        return self.environ.get("CONTENT_LENGTH")

    def raw_body(self, max_bytes: int) -> bytes:
        return get_input_stream(self.environ, safe_fallback=True).read(max_bytes + 1)

    def json_body(self, max_bytes: int):
        """The JSON body, or a Rejection saying what is wrong with it."""
        content_type = self.content_type()
        mimetype = content_type.split(";", 1)[0].strip().lower()
        if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
            return Rejection(422, f"Content-Type must be application/json (got {content_type or 'none'})",
                             None, "content-type")
        length = self.content_length()
        if length and length.isdigit() and int(length) > max_bytes:
            return Rejection(422, f"request body too large: {length} bytes, the limit is {max_bytes}", None, "size")
        raw = self.raw_body(max_bytes)
        if len(raw) > max_bytes:
            return Rejection(422, f"request body too large: the limit is {max_bytes} bytes", None, "size")
        if length and length.isascii() and length.isdigit() and len(raw) < int(length):  # (a WSGI server
            return Rejection(422, f"request body ended early: {len(raw)} of the {length} bytes its "  # may hand
                                  f"Content-Length announced", None, "size")  # over what came before a close)
        if not raw.strip():
            return Rejection(422, "request body is empty: send a JSON object", None, "json")
        self.body_text = raw
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejection(422, _unreadable(exc), None, "json")
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # (brackets in strings count too: a first sieve)
            levels = depth(body)
            if levels < 0:
                return Rejection(422, f"request body has more than {MAX_CONTAINERS} objects and arrays",
                                 None, "json")
            if levels > MAX_DEPTH:
                return Rejection(422, f"request body is nested too deep: at most {MAX_DEPTH} levels of objects "
                                      f"and arrays", None, "json")
        return body


def _unreadable(exc: orjson.JSONDecodeError) -> str:
    """Why a body the parser refused cannot be read. Two are JSON's grammar but no value this
    API (or any Unicode text) can hold; the rest (NaN/Infinity, invalid UTF-8, nesting over
    1024 levels) are not JSON."""
    why = str(exc)
    if why.startswith("number is infinity"):
        return f"request body has a number beyond a double's range (about 1.8e308): {why}"
    if why.startswith(("no low surrogate", "invalid low surrogate", "invalid high surrogate")):  # escapes
        return (f"request body has a lone surrogate escape (\\ud800-\\udfff without its pair), which is "
                f"not Unicode text: {why}")
    return f"request body is not valid JSON: {why}"


MAX_DEPTH = 200  # levels of objects and arrays in a request body (the task keeps the body as JSON text)
MAX_CONTAINERS = 10_000  # objects and arrays in a request body (a cover has one): walking more costs the loop


def depth(value, budget: int = MAX_CONTAINERS) -> int:
    """Levels of objects and arrays in a parsed JSON value (a scalar: 0), without recursion;
    -1 as soon as it holds more than `budget` of them (the walk stops there)."""
    deepest, stack, seen = 0, [(value, 1)], 1
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, level)
        for v in value:
            if isinstance(v, (dict, list)):
                seen += 1
                if seen > budget:
                    return -1
                stack.append((v, level + 1))
    return deepest


def envelope(code: int, msg: str, data, transport: str, headers: list | None = None) -> ApiResponse:
    return ApiResponse(code, orjson.dumps({"code": code, "msg": msg, "data": data}),
                       http_status(code, transport), headers or [], msg=msg)


def reject(svc: Service, rej: Rejection) -> ApiResponse:
    headers = [("Retry-After", str(rej.retry_after))] if rej.retry_after else []
    return envelope(rej.code, rej.msg, None, rej.transport or svc.cfg.transport, headers)


def success(data) -> ApiResponse:
    return ApiResponse(200, orjson.dumps({"code": 200, "msg": "success", "data": data}), 200)


def _prelude(svc: Service, req: ApiRequest):
    """Prefer header, authentication, latency, maintenance and forced codes: (key, prefer) or a response."""
    try:
        prefer = faults.Prefer.parse(req.header("Prefer"))
    except faults.PreferError as exc:
        return reject(svc, Rejection(422, str(exc), "Prefer", "prefer"))
    key, view, rej = svc.authenticate(req.header("Authorization"))
    if rej is None:
        req.view = view
        delay = faults.latency_for(view.settings, prefer)
        if delay and not req.delayed:
            if req.inline or req.timed:  # a timer on the loop, not a sleeping thread
                raise Delay(delay)
            time.sleep(delay)
        rej = svc.gate(key, prefer, view.settings, view.armed, req.path)
    req.key_masked = mask_key(key)
    if rej is not None:
        return reject(svc, rej)
    return key, prefer


class PendingCover:
    """An upload-cover that passed every check and waits for its store write (`store.accept`):
    `settle` turns the store's answer into the response. The caller makes the write, alone
    (`handle`) or batched with others (the event-loop server)."""

    __slots__ = ("svc", "draft")

    def __init__(self, svc: Service, draft: CoverDraft):
        self.svc, self.draft = svc, draft

    def settle(self, balance: int | None) -> ApiResponse:
        try:
            result = self.svc.settle_cover(self.draft, balance)
        except Exception as exc:
            return bug(exc)
        if isinstance(result, Accepted):
            resp = success({"taskId": result.task_id})
            resp.task_id = result.task_id
            return resp
        return reject(self.svc, result)

    def answer(self, result) -> ApiResponse:
        """The response to the store's answer for this cover: a balance, None, or the exception."""
        return self.failed(result) if isinstance(result, Exception) else self.settle(result)

    def failed(self, exc: BaseException) -> ApiResponse:
        """The store write raised: nothing was stored."""
        try:
            self.svc.abandon_cover(self.draft)
        except Exception:
            traceback.print_exc()
        return bug(exc)


def upload_cover(svc: Service, req: ApiRequest) -> ApiResponse | PendingCover:
    """Submit a cover task."""
    pre = _prelude(svc, req)
    if isinstance(pre, ApiResponse):
        return pre
    key, prefer = pre
    body = req.json_body(svc.cfg.max_body_bytes)
    if isinstance(body, Rejection):
        return reject(svc, body)
    draft = svc.draft_cover(key, body, req.host_url(svc.cfg.self_url()), prefer,
                            req.view.settings, req.view.armed, nowait=req.inline, text=req.body_text)
    if isinstance(draft, Rejection):
        return reject(svc, draft)
    return PendingCover(svc, draft)


def record_info(svc: Service, req: ApiRequest) -> ApiResponse:
    """Poll a task."""
    pre = _prelude(svc, req)
    if isinstance(pre, ApiResponse):
        return pre
    key, _ = pre
    task_id = req.query("taskId")
    result = svc.record_info(key, task_id, req.view.settings, nowait=req.inline)
    resp = reject(svc, result) if isinstance(result, Rejection) else success(result)
    resp.task_id = task_id or None
    return resp


def credit(svc: Service, req: ApiRequest) -> ApiResponse:
    """The key's remaining credits."""
    pre = _prelude(svc, req)
    if isinstance(pre, ApiResponse):
        return pre
    return success(svc.credit(pre[0]))  # the balance now (the prelude's account may be a cached copy)


PREFIX = "/api/"  # the faked API's paths (requests under it are journaled, even those of no route)
ROUTES = {
    ("POST", "/api/v1/generate/upload-cover"): upload_cover,
    ("GET", "/api/v1/generate/record-info"): record_info,
    ("GET", "/api/v1/chat/credit"): credit,
}


def bug(exc: BaseException) -> ApiResponse:
    """A bug of the fake, or a store it cannot use: still an envelope (500), and the reason in
    the log (a bug's traceback; an unavailable store at most once every few seconds)."""
    msg = internal_error(exc)
    return ApiResponse(500, orjson.dumps({"code": 500, "msg": msg, "data": None}), 500, msg=msg)


def internal_error(exc: BaseException) -> str:
    """The msg of a 500 the fake did not mean to answer, after saying why in the log."""
    reason = unavailable(exc)
    if reason is not None:
        API_OUTAGE.failed(reason)
        return f"Internal Error: the fake's store is unavailable ({reason})"
    traceback.print_exception(exc)
    return f"Internal Error (kie-mock bug): {type(exc).__name__}"


def start(svc: Service, handler, req: ApiRequest) -> ApiResponse | PendingCover:
    """Run one handler: its response, or a cover waiting for its store write."""
    try:
        return handler(svc, req)
    except (MustBlock, Delay):
        raise
    except WouldWait:  # a rate window's write lock is held elsewhere: wait in a thread, not on the loop
        raise MustBlock from None
    except Exception as exc:
        return bug(exc)


def finish(svc: Service, req: ApiRequest, resp: ApiResponse) -> ApiResponse:
    """Journal the answered request."""
    journal(svc, req.method, req.path, req.key_masked, resp.status, resp.code, resp.task_id, resp.msg)
    return resp


def journal(svc: Service, method: str, path: str, key_masked: str | None, http_status: int, code: int,
            task_id: str | None, msg: str) -> None:
    """One answered API request in the request journal (GET /_mock/requests)."""
    svc.journal.add({"at": svc.clock.now(), "method": method, "path": path, "key": key_masked,
                     "http_status": http_status, "code": code, "msg": msg, "task_id": task_id})


def settle_now(svc: Service, pending: PendingCover) -> ApiResponse:
    """Make a pending cover's store write alone, now, and answer it."""
    try:
        result = svc.store.accept(*pending.draft.accept_args())
    except Exception as exc:
        result = exc
    return pending.answer(result)


def handle(svc: Service, handler, req: ApiRequest) -> ApiResponse:
    """Run one handler, its store write included; journal the request. Never raises (but MustBlock)."""
    resp = start(svc, handler, req)
    if isinstance(resp, PendingCover):
        resp = settle_now(svc, resp)
    return finish(svc, req, resp)


class FastPath:
    """WSGI middleware: the API endpoints served before Flask; anything else goes to Flask."""

    def __init__(self, svc: Service, app):
        self.svc, self.app = svc, app

    def __call__(self, environ, start_response):
        handler = ROUTES.get((environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")))
        if handler is None:
            return self.app(environ, start_response)
        resp = handle(self.svc, handler, ApiRequest(environ))
        start_response(f"{resp.status} {_reason(resp.status)}", response_headers(resp))
        return [resp.body]


def response_headers(resp: ApiResponse) -> list:
    return [("Content-Type", "application/json"), ("Content-Length", str(len(resp.body))), *resp.headers]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "UNKNOWN"  # 455 and other codes HTTP does not name


def _flask_view(handler):
    def view():
        svc = current_app.extensions["kie_mock"]
        resp = handle(svc, handler, ApiRequest(request.environ))
        return Response(resp.body, resp.status, resp.headers, mimetype="application/json")

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


for (_method, _path), _handler in ROUTES.items():
    bp.add_url_rule(_path, view_func=_flask_view(_handler), methods=[_method])
