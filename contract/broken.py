"""Broken variants of the fake, to prove the suite bites; and a conforming server that is not the fake.

Each variant is the real app (mock_server.create_app) wrapped, never forked: WSGI middleware
that rewrites one thing on the way in or out, or a wrapper around callback delivery. Each
breaks exactly one rule, and `verify` must fail on it and name that rule in its table
(tests/test_contract_bites.py). `other-server` changes everything the contract leaves
open (ids, messages, timings, transport, no control API) and must pass.

    python -m contract.broken stage-order-swapped --port 8790     # serve one, then:
    kie-mock verify --base-url http://127.0.0.1:8790
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

from . import schemas as S
from .servers import LoopbackDelivery, fake_config, make_fake

JSON_PATHS = ("/api/",)


class Rewrite:
    """WSGI middleware: `on_request(environ, body) -> body` and
    `on_response(environ, status, headers, body) -> (status, headers, body)`; either may be None."""

    def __init__(self, app, on_request=None, on_response=None):
        self.app = app
        self.on_request = on_request
        self.on_response = on_response

    def __call__(self, environ, start_response):
        if self.on_request:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            body = self.on_request(environ, body)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status, headers = captured["status"], captured["headers"]
        if self.on_response:
            status, headers, body = self.on_response(environ, status, headers, body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]


def _json_body(body: bytes):
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def on_json_request(path: str, fn: Callable[[dict], dict]):
    """A request hook that edits the JSON body of requests to `path`."""

    def hook(environ, body):
        data = _json_body(body)
        if environ.get("PATH_INFO") == path and isinstance(data, dict):
            return json.dumps(fn(data)).encode()
        return body

    return hook


def on_json_response(fn: Callable[[dict, dict], dict], prefix: str = "/api/"):
    """A response hook that edits the JSON envelope of answers under `prefix`."""

    def hook(environ, status, headers, body):
        data = _json_body(body)
        if environ.get("PATH_INFO", "").startswith(prefix) and isinstance(data, dict):
            return status, headers, json.dumps(fn(environ, data)).encode()
        return status, headers, body

    return hook


class DeliveryRewrite:
    """Wraps callback delivery: `fn(url, payload, headers, send)` decides what is sent and when."""

    def __init__(self, fn, inner=None):
        self.fn = fn
        self.inner = inner or LoopbackDelivery()
        self.lock = threading.Lock()

    def __call__(self, url, body: bytes, headers):
        with self.lock:
            return self.fn(url, json.loads(body), headers,
                           lambda u, p, h: self.inner(u, json.dumps(p).encode(), h))


# -- the variants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    rule: str  # what verify's table must name
    breaks: str  # one sentence
    build: Callable[[], object]  # -> a WSGI app


def _title_off_by_one():
    def fix(body):
        try:
            b = S.branch_for(body.get("customMode"), body.get("instrumental"), body.get("model"))
        except (LookupError, TypeError):
            return body
        limit = b.limit("title")
        if limit and isinstance(body.get("title"), str) and len(body["title"]) == limit + 1:
            body["title"] = body["title"][:limit]  # the bug: a title one past the limit slips through
        return body

    return Rewrite(make_fake(), on_request=on_json_request(S.UPLOAD_COVER, fix))


def _weights_three_decimals():
    def fix(body):
        for w in S.WEIGHTS:
            if isinstance(body.get(w), float) and 0 <= body[w] <= 1:
                body[w] = round(body[w], 2)  # the bug: rounds instead of rejecting 3 decimals
        return body

    return Rewrite(make_fake(), on_request=on_json_request(S.UPLOAD_COVER, fix))


def _booleans_as_strings():
    def fix(body):
        for name in ("customMode", "instrumental"):
            if body.get(name) in ("true", "false"):
                body[name] = body[name] == "true"  # the bug: "true"/"false" taken as booleans
        return body

    return Rewrite(make_fake(), on_request=on_json_request(S.UPLOAD_COVER, fix))


def _callback_url_optional():
    def fix(body):
        body.setdefault("callBackUrl", "http://127.0.0.1:9/unused")  # the bug: callBackUrl not required
        return body

    return Rewrite(make_fake(), on_request=on_json_request(S.UPLOAD_COVER, fix))


def _auth_not_enforced():
    def inject(environ, body):
        if environ.get("PATH_INFO", "").startswith("/api/") and not environ.get("HTTP_AUTHORIZATION"):
            environ["HTTP_AUTHORIZATION"] = "Bearer kie-mock-key"  # the bug: a missing key is let through
        return body

    return Rewrite(make_fake(), on_request=inject)


def _envelope_msg_renamed():
    def rename(environ, env):
        if "msg" in env:
            env["message"] = env.pop("msg")
        return env

    return Rewrite(make_fake(), on_response=on_json_response(rename))


def _undocumented_error_code():
    def recode(environ, env):
        if env.get("code") == 422:
            env["code"] = 400  # the bug: validation errors as 400, a code the page does not list
        return env

    return Rewrite(make_fake(), on_response=on_json_response(recode))


def _record_info_disagrees():
    def alter(environ, env):
        if environ.get("PATH_INFO") == S.RECORD_INFO and isinstance(env.get("data"), dict):
            for t in ((env["data"].get("response") or {}).get("sunoData") or []):
                t["audioUrl"] = t.get("audioUrl", "").replace(".mp3", "-v2.mp3")
        return env

    return Rewrite(make_fake(), on_response=on_json_response(alter))


def _first_status_renamed():
    def rename(environ, env):
        data = env.get("data")
        if environ.get("PATH_INFO") == S.RECORD_INFO and isinstance(data, dict) and data.get("status") == "FIRST_SUCCESS":
            data["status"] = "FIRST_SUCCEEDED"  # the bug: a status the contract does not name, mid-way only
        return env

    slow = fake_config(instant=False, stage_delays=(0.3, 0.9, 1.8))  # a window in which to poll it
    return Rewrite(make_fake(slow), on_response=on_json_response(rename))


def _files_missing():
    def gone(environ, status, headers, body):
        if environ.get("PATH_INFO", "").startswith("/files/"):
            return "404 NOT FOUND", [("Content-Type", "application/json")], b'{"code":404,"msg":"Not Found","data":null}'
        return status, headers, body

    return Rewrite(make_fake(), on_response=gone)


def _rate_limit_as_http_200():
    def flatten(environ, status, headers, body):
        if status.startswith("429"):
            return "200 OK", [(k, v) for k, v in headers if k.lower() != "retry-after"], body
        return status, headers, body

    return Rewrite(make_fake(), on_response=flatten)


def _callback_task_id_renamed():
    def send(url, payload, headers, deliver):
        payload["data"]["taskId"] = payload["data"].pop("task_id")  # the bug: camelCase in callbacks
        return deliver(url, payload, headers)

    return make_fake(deliver=DeliveryRewrite(send))


def _stage_order_swapped():
    held: dict[str, tuple] = {}

    def send(url, payload, headers, deliver):
        stage, task = payload["data"]["callbackType"], payload["data"]["task_id"]
        if stage == "text":  # the bug: text is held back and sent after first
            held[task] = (url, payload, headers)
            from mock_server.delivery import Attempt

            return Attempt(200, None, 0.0)
        result = deliver(url, payload, headers)
        if task in held:
            deliver(*held.pop(task))
        return result

    return make_fake(deliver=DeliveryRewrite(send))


def _first_callback_without_audio():
    def send(url, payload, headers, deliver):
        if payload["data"]["callbackType"] == "first":
            for t in payload["data"]["data"]:
                t["audio_url"] = ""  # the bug: no finished track in the first callback
        return deliver(url, payload, headers)

    return make_fake(deliver=DeliveryRewrite(send))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("title-limit-off-by-one", "title.maxLength", "accepts a title one character past the model's limit",
            _title_off_by_one),
    Variant("weights-three-decimals", "styleWeight.multipleOf", "accepts weights with 3 decimals (rounds them)",
            _weights_three_decimals),
    Variant("callback-url-optional", "callBackUrl.required", "accepts a body without callBackUrl",
            _callback_url_optional),
    Variant("booleans-as-strings", "customMode.type", 'accepts customMode "true" / "false" (strings) as booleans',
            _booleans_as_strings),
    Variant("auth-not-enforced", "auth.required", "a request without Authorization is served", _auth_not_enforced),
    Variant("envelope-msg-renamed", "envelope.fields", "the envelope says 'message' instead of 'msg'",
            _envelope_msg_renamed),
    Variant("undocumented-error-code", "envelope.code-documented", "validation errors come as code 400",
            _undocumented_error_code),
    Variant("record-info-disagrees", "record-info.audioUrl", "record-info's audioUrl differs from the callback's",
            _record_info_disagrees),
    Variant("first-status-renamed", "schema:record-info-response",
            "record-info says FIRST_SUCCEEDED between the first and complete stages", _first_status_renamed),
    Variant("files-missing", "files.audio_url", "the generated files answer 404", _files_missing),
    Variant("rate-limit-as-http-200", "envelope.transport", "rate limiting answered with HTTP 200, no Retry-After",
            _rate_limit_as_http_200),
    Variant("callback-task-id-renamed", "callback.task_id", "callbacks say data.taskId instead of data.task_id",
            _callback_task_id_renamed),
    Variant("stage-order-swapped", "callback.stage-order", "the text callback arrives after first",
            _stage_order_swapped),
    Variant("first-callback-without-audio", "callback.schema[first]",
            "the first callback has no finished track (every audio_url empty)", _first_callback_without_audio),
)}


# -- a conforming server that is not the fake ---------------------------------------------------------------
_FAKE_ID = re.compile(r"[0-9a-f]{32}")


def other_server():
    """The fake dressed as another implementation of the contract: its own task-id format,
    messages, stage timings, createTime as epoch ms, HTTP status mirroring the code, and no
    control API. Everything it does is allowed by the contract, so verify must pass."""
    ids: dict[str, str] = {}
    back: dict[str, str] = {}
    lock = threading.Lock()

    def other(fake_id: str) -> str:
        with lock:
            if fake_id not in ids:
                new = "ot-" + uuid.uuid4().hex[:20].upper()
                ids[fake_id], back[new] = new, fake_id
            return ids[fake_id]

    def to_other(text: str) -> str:
        return _FAKE_ID.sub(lambda m: other(m.group(0)), text)  # the fake's ids are 32 hex digits

    def to_fake(text: str) -> str:
        return re.sub(r"ot-[0-9A-F]{20}", lambda m: back.get(m.group(0), m.group(0)), text)

    def on_request(environ, body):
        environ["PATH_INFO"] = to_fake(environ.get("PATH_INFO", ""))
        environ["QUERY_STRING"] = to_fake(environ.get("QUERY_STRING", ""))
        return body

    messages = {401: "Unauthorized: check your API key", 402: "Not enough credits",
                422: "Invalid request parameters", 404: "No such endpoint", 455: "Down for maintenance"}

    def on_response(environ, status, headers, body):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_mock"):
            return ("404 NOT FOUND", [("Content-Type", "application/json")],
                    b'{"code":404,"msg":"No such endpoint","data":null}')
        env = _json_body(body)
        if isinstance(env, dict) and path.startswith("/api/"):
            if env.get("code") == 200 and env.get("msg") == "success":
                env["msg"] = "ok"
            elif env.get("code") in messages:
                env["msg"] = messages[env["code"]]
            body = json.dumps(env).encode()
        return status, headers, to_other(body.decode("utf-8", "replace")).encode() if isinstance(env, (dict, list)) \
            else body

    def send(url, payload, headers, deliver):
        return deliver(url, json.loads(to_other(json.dumps(payload))), headers)

    cfg = fake_config(instant=False, stage_delays=(0.15, 0.3, 0.5), create_time="epoch_ms", transport="status")
    app = make_fake(cfg, deliver=DeliveryRewrite(send))
    return Rewrite(app, on_request=on_request, on_response=on_response)


def build(name: str):
    if name == "other-server":
        return other_server()
    return VARIANTS[name].build()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m contract.broken", description=__doc__.splitlines()[0])
    p.add_argument("variant", choices=[*VARIANTS, "other-server"])
    p.add_argument("--port", type=int, default=8790)
    args = p.parse_args(argv)
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", args.port, build(args.variant), threaded=True)
    what = VARIANTS[args.variant].breaks if args.variant in VARIANTS else "conforming, not the fake"
    print(f"{args.variant} ({what}) on http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
