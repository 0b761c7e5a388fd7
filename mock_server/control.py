"""The control API under /_mock (documented in control-openapi.yaml): reset, accounts,
settings, armed faults, the clock, and what happened (tasks, requests, callback attempts).

Answers use the same {code, msg, data} envelope, with the HTTP status mirroring the code.
When an admin token is configured, every call needs `X-Admin-Token: <token>`.
"""

from __future__ import annotations

import hmac
import uuid

from flask import Blueprint, Response, current_app, request

from . import lifecycle
from .envelope import respond
from .faults import ERROR_CODES
from .scenarios import NAMES, Scenario
from .service import Service, mask_key

PREFIX = "/_mock"
bp = Blueprint("control", __name__, url_prefix=PREFIX)

SETTING_TYPES = {
    "rate_limit": int, "rate_window": float, "cover_cost": int, "record_info_per_second": int,
    "maintenance": bool, "maintenance_window": list, "latency": dict, "default_scenario": str,
}


class BadRequest(ValueError):
    pass


def _svc() -> Service:
    return current_app.extensions["kie_mock"]


def ok(data=None, msg: str = "success") -> Response:
    return respond(200, msg, data, transport="status")


def fail(code: int, msg: str) -> Response:
    return respond(code, msg, None, transport="status")


@bp.before_request
def _guard():
    token = _svc().cfg.admin_token
    if token and not hmac.compare_digest(request.headers.get("X-Admin-Token", ""), token):
        return fail(401, "control API: missing or wrong X-Admin-Token")
    return None


@bp.errorhandler(BadRequest)
def _bad(exc):
    return fail(400, str(exc))


def _json() -> dict:
    body = request.get_json(silent=True) if request.data else {}
    if not isinstance(body, dict):
        raise BadRequest("control API: send a JSON object")
    return body


def _number(body: dict, name: str, default=None, lo: float = 0, hi: float = float("inf")):
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{name}: a number from {lo:g} to {hi:g} is required (got {value!r})")
    return value


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name}: a whole number is required (got {raw!r})")
    return int(raw)


@bp.get("/health")
def health():
    """Liveness, and what this fake is configured with."""
    svc = _svc()
    return ok({"status": "ok", "clock": "virtual" if svc.clock.virtual else "real", "now": svc.clock.now(),
               "store": svc.cfg.store.split(":", 1)[0], "transport": svc.cfg.transport})


@bp.post("/reset")
def reset():
    """Forget all state; configured keys get their starting balances back."""
    _svc().reset()
    return ok(None, "reset")


# -- accounts ---------------------------------------------------------------------------------------
def _account_view(acc: dict) -> dict:
    return {"key": mask_key(acc["key"]), "credits": acc["credits"], "signed": bool(acc.get("hmac_key"))}


@bp.get("/accounts")
def list_accounts():
    """Every account (keys masked)."""
    return ok([_account_view(a) for a in _svc().store.list_accounts()])


@bp.put("/accounts/<key>")
def put_account(key: str):
    """Create or change an account: {"credits": int, "webhookHmacKey": str|null}."""
    body = _json()
    store = _svc().store
    current = store.get_account(key) or {"credits": 0, "hmac_key": None}
    credits = int(_number(body, "credits", current["credits"], 0, 10**12))
    hmac_key = body.get("webhookHmacKey", current.get("hmac_key"))
    if hmac_key is not None and (not isinstance(hmac_key, str) or not hmac_key):
        raise BadRequest("webhookHmacKey: a non-empty string or null")
    store.put_account(key, credits, hmac_key)
    return ok(_account_view(store.get_account(key)))


@bp.delete("/accounts/<key>")
def delete_account(key: str):
    """Remove a key: its requests then answer 401."""
    if not _svc().store.delete_account(key):
        return fail(404, "no such account")
    return ok(None, "deleted")


# -- settings --------------------------------------------------------------------------------------
def _check_setting(name: str, value):
    if name not in SETTING_TYPES:
        raise BadRequest(f"unknown setting {name!r}; known: {', '.join(SETTING_TYPES)}")
    if value is None and name in ("maintenance_window", "latency"):
        return None
    if name == "maintenance":
        if not isinstance(value, bool):
            raise BadRequest("maintenance: true or false")
        return value
    if name == "maintenance_window":  # [start, end] on the fake's clock, or {"start_in", "duration"}
        now = _svc().clock.now()
        if isinstance(value, dict):
            start = now + _number(value, "start_in", 0)
            return [start, start + _number(value, "duration", None, 0)]
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return [float(value[0]), float(value[1])]
        raise BadRequest("maintenance_window: [start, end] epoch seconds, or {start_in, duration} seconds")
    if name == "latency":
        if not isinstance(value, dict):
            raise BadRequest("latency: {min: seconds, max: seconds} or null")
        lo = _number(value, "min", 0, 0, 60)
        return {"min": lo, "max": _number(value, "max", lo, lo, 60)}
    if name == "default_scenario":
        try:
            return Scenario.parse(value).name
        except (ValueError, AttributeError) as exc:
            raise BadRequest(str(exc)) from None
    return SETTING_TYPES[name](_number({name: value}, name, None, 0, 10**9))


@bp.get("/settings")
def get_settings():
    """The settings in force (configured defaults overlaid with changes)."""
    return ok(_svc().settings())


@bp.patch("/settings")
def patch_settings():
    """Change settings at run time: rate_limit, rate_window, cover_cost, maintenance, latency, ..."""
    body = _json()
    changes = {name: _check_setting(name, value) for name, value in body.items()}
    _svc().store.update_settings(changes)
    return ok(_svc().settings())


# -- faults and scenarios -------------------------------------------------------------------------
@bp.get("/scenarios")
def scenarios():
    """The named task scenarios, and the codes that can be forced."""
    return ok({"scenarios": list(NAMES), "codes": list(ERROR_CODES)})


def arm(body: dict) -> dict:
    """Validate and arm one fault: {"code": 402} or {"scenario": "fail-501"}, "count", "key"."""
    count = int(_number(body, "count", 1, 1, 10**6))
    key = body.get("key", "*")
    if not isinstance(key, str) or not key:
        raise BadRequest("key: an API key, or \"*\" for every key")
    fault = {"id": uuid.uuid4().hex[:12], "key": key, "count": count}
    if "code" in body:
        if body["code"] not in ERROR_CODES or isinstance(body["code"], bool):
            raise BadRequest(f"code: one of {', '.join(map(str, ERROR_CODES))}")
        fault.update(kind="code", code=body["code"])
    elif "scenario" in body:
        try:
            scn = Scenario.parse(body["scenario"], body.get("params"))
        except (ValueError, AttributeError, TypeError) as exc:
            raise BadRequest(str(exc)) from None
        fault.update(kind="scenario", scenario=scn.name, params=scn.params)
    else:
        raise BadRequest("give either code (the next requests answer it) or scenario (the next tasks play it)")
    _svc().store.arm_fault(fault)
    return fault


def _fault_view(f: dict) -> dict:
    return {**f, "key": f["key"] if f["key"] == "*" else mask_key(f["key"])}


@bp.post("/faults")
def post_fault():
    """Arm a fault for the next `count` requests (code) or tasks (scenario) of `key`."""
    return ok(_fault_view(arm(_json())), "armed")


@bp.get("/faults")
def get_faults():
    """Armed faults not used up yet."""
    return ok([_fault_view(f) for f in _svc().store.list_faults()])


@bp.delete("/faults")
def delete_faults():
    """Disarm every fault."""
    _svc().store.clear_faults()
    return ok(None, "cleared")


# -- clock ------------------------------------------------------------------------------------------
@bp.get("/clock")
def get_clock():
    svc = _svc()
    return ok({"now": svc.clock.now(), "virtual": svc.clock.virtual})


@bp.post("/clock/advance")
def advance():
    """Move a virtual clock forward {"seconds": s}; what falls due fires before the answer."""
    svc = _svc()
    if not svc.clock.virtual:
        return fail(409, "the clock is real: start the fake with --clock virtual to advance it")
    seconds = _number(_json(), "seconds", None, 0, 10**9)
    return ok({"now": svc.clock.advance(seconds), "virtual": True})


# -- tasks, requests, callbacks ---------------------------------------------------------------------
def _task_view(task: dict) -> dict:
    return {"taskId": task["taskId"], "key": mask_key(task["key"]), "status": task["status"],
            "stage": task["stage"], "scenario": task["scenario"], "callBackUrl": task["callBackUrl"],
            "model": task["model"], "created_at": task["created_at"], "expires_at": task["expires_at"],
            "delivery": task["delivery"], "plan": task["plan"]}


@bp.get("/tasks")
def list_tasks():
    """Tasks, newest first; filters: key, status, limit."""
    tasks = _svc().store.list_tasks(request.args.get("key"), request.args.get("status"), _int_arg("limit", 100))
    return ok([_task_view(t) for t in tasks])


@bp.get("/tasks/<task_id>")
def get_task(task_id: str):
    """One task: its record, its record-info view, and its pending jobs."""
    svc = _svc()
    task = svc.store.get_task(task_id)
    if task is None:
        return fail(404, "no such task")
    return ok({**_task_view(task), "recordInfo": lifecycle.record_info(task),
               "jobs": svc.store.list_jobs(task_id)})


@bp.post("/tasks/<task_id>/fire")
def fire(task_id: str):
    """Make the task's pending stages and retries due now."""
    svc = _svc()
    if svc.store.get_task(task_id) is None:
        return fail(404, "no such task")
    return ok({"jobs": svc.scheduler.fire_now(task_id)})


@bp.get("/requests")
def requests_log():
    """Received API requests, newest first; filters: path, code, limit."""
    code = request.args.get("code")
    entries = _svc().store.read_log("requests", _int_arg("limit", 100), path=request.args.get("path"),
                                    code=int(code) if code and code.isdigit() else None)
    return ok(entries)


@bp.get("/callbacks")
def callbacks_log():
    """Callback delivery attempts, newest first; filters: task_id, stage, limit."""
    entries = _svc().store.read_log("attempts", _int_arg("limit", 100), task_id=request.args.get("task_id"),
                                    stage=request.args.get("stage"))
    return ok(entries)
