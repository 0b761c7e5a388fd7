"""The API's HTTP face (thin): parse, call the service, render the envelope."""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, Response, current_app, request

from . import faults
from .envelope import respond, success
from .rules import Rejection
from .service import Accepted, Service, mask_key

bp = Blueprint("api", __name__)

JSON_TYPES = ("application/json",)


def _service() -> Service:
    return current_app.extensions["kie_mock"]


def reject(rej: Rejection) -> Response:
    headers = {"Retry-After": str(rej.retry_after)} if rej.retry_after else None
    return respond(rej.code, rej.msg, None, transport=_service().cfg.transport, headers=headers)


def parse_json_body(max_bytes: int):
    """The request's JSON body, or a Rejection saying what is wrong with it."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        shown = request.content_type or "none"
        return Rejection(422, f"Content-Type must be application/json (got {shown})", None, "content-type")
    if request.content_length is not None and request.content_length > max_bytes:
        return Rejection(422, f"request body too large: {request.content_length} bytes, the limit is {max_bytes}",
                         None, "size")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        return Rejection(422, f"request body too large: the limit is {max_bytes} bytes", None, "size")
    if not raw.strip():
        return Rejection(422, "request body is empty: send a JSON object", None, "json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN/Infinity, invalid UTF-8, > 64-bit integers and nesting over 1024 levels.
        return Rejection(422, f"request body is not valid JSON: {exc}", None, "json")


def _prelude():
    """Prefer header, authentication, maintenance and forced codes: (service, key, prefer) or a Response."""
    svc = _service()
    try:
        prefer = faults.Prefer.parse(request.headers.get("Prefer"))
    except faults.PreferError as exc:
        return reject(Rejection(422, str(exc), "Prefer", "prefer"))
    key, rej = svc.authenticate(request.headers.get("Authorization"))
    if rej is None:
        settings = svc.settings()
        delay = faults.latency_for(settings, prefer)
        if delay:
            time.sleep(delay)
        rej = svc.gate(key, prefer, settings)
    request.environ["kie_mock.key"] = mask_key(key)
    if rej is not None:
        return reject(rej)
    return svc, key, prefer


@bp.post("/api/v1/generate/upload-cover")
def upload_cover():
    """Submit a cover task."""
    pre = _prelude()
    if isinstance(pre, Response):
        return pre
    svc, key, prefer = pre
    body = parse_json_body(svc.cfg.max_body_bytes)
    if isinstance(body, Rejection):
        return reject(body)
    result = svc.upload_cover(key, body, request.host_url, prefer)
    if isinstance(result, Accepted):
        request.environ["kie_mock.task_id"] = result.task_id
        return success({"taskId": result.task_id})
    return reject(result)


@bp.get("/api/v1/generate/record-info")
def record_info():
    """Poll a task."""
    pre = _prelude()
    if isinstance(pre, Response):
        return pre
    svc, key, _ = pre
    result = svc.record_info(key, request.args.get("taskId"))
    return reject(result) if isinstance(result, Rejection) else success(result)


@bp.get("/api/v1/chat/credit")
def credit():
    """The key's remaining credits."""
    pre = _prelude()
    if isinstance(pre, Response):
        return pre
    svc, key, _ = pre
    return success(svc.credit(key))
