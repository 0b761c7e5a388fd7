"""The control API under /_mock (documented in control-openapi.yaml): reset, accounts,
settings, armed faults, the clock, and what happened (tasks, requests, callback attempts).

Answers use the same {code, msg, data} envelope, with the HTTP status mirroring the code.
When an admin token is configured, every call needs `X-Admin-Token: <token>`.
"""

from __future__ import annotations

import hmac
import os

import orjson
from flask import Blueprint, Response, current_app, request

from . import lifecycle
from .envelope import respond
from .admin import BadRequest, number, arm, put_account as _put_account, update_settings
from .faults import ERROR_CODES
from .scenarios import NAMES, Scenario
from .stores import unavailable
from .config import mask_key
from .service import Service

PREFIX = "/_mock"
TASK_STATUSES = ("PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS", "CREATE_TASK_FAILED",
                 "GENERATE_AUDIO_FAILED", "CALLBACK_EXCEPTION", "SENSITIVE_WORD_ERROR")
CALLBACK_STAGES = ("text", "first", "complete", "error")
LIMIT_MAX = 2**31 - 1  # a ?limit= beyond this is taken as this (SQLite's integers end at 2**63)
bp = Blueprint("control", __name__, url_prefix=PREFIX)

def _svc() -> Service:
    return current_app.extensions["kie_mock"]


def ok(data=None, msg: str = "success") -> Response:
    return respond(200, msg, data, transport="status")


def fail(code: int, msg: str) -> Response:
    return respond(code, msg, None, transport="status")


@bp.before_request
def _guard():
    svc = _svc()
    token = svc.cfg.admin_token
    given = request.headers.get("X-Admin-Token", "")
    # compared as bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401)
    if token and not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        return fail(401, "control API: missing or wrong X-Admin-Token")
    if request.endpoint != "control.health":  # health answers 503 itself when the store is down
        svc.sync_clock()
    return None


@bp.errorhandler(BadRequest)
def _bad(exc):
    return fail(400, str(exc))


def _json() -> dict:
    # the raw body, whatever its Content-Type (a form-encoded body must not read as "no change");
    # parsed as the API parses: nesting, lone surrogates and numbers past a double are refused
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"control API: the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("control API: send a JSON object")
    return body


def _int_arg(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name}: a whole number is required (got {raw[:40]!r})")
    digits = raw.lstrip("0") or "0"  # (int() refuses more than 4300 digits)
    return LIMIT_MAX if len(digits) > len(str(LIMIT_MAX)) else min(int(digits), LIMIT_MAX)  # more than any store holds: all


def _choice_arg(name: str, choices) -> str | None:
    """A filter that can only take known values: a typo answers 400, not an empty list."""
    raw = request.args.get(name)
    if raw is not None and raw not in choices:
        raise BadRequest(f"{name}: one of {', '.join(choices)} (got {raw!r})")
    return raw


@bp.get("/health")
def health():
    """Liveness, and what this fake is configured with; 503 while the store cannot be used."""
    svc = _svc()
    try:
        settings = svc.store.get_settings()
        # and a write, which a store that reads but cannot write (a full disk) refuses
        svc.store.log("health", {"at": svc.clock.now(), "pid": os.getpid()}, 1)
    except Exception as exc:
        reason = unavailable(exc)
        if reason is None:
            raise
        return fail(503, f"the fake's store is unavailable ({reason})")
    svc.observe_clock(settings)
    return ok({"status": "ok", "clock": "virtual" if svc.clock.virtual else "real", "now": svc.clock.now(),
               "store": svc.cfg.store.split(":", 1)[0], "transport": svc.cfg.transport, "pid": os.getpid()})


@bp.post("/reset")
def reset():
    """Back to the start state: configured keys with their starting balances, and the scenario
    file given at start applied again."""
    _svc().reset()
    return ok(None, "reset")


# -- accounts ---------------------------------------------------------------------------------------
def _account_view(acc: dict) -> dict:
    return {"key": mask_key(acc["key"]), "credits": acc["credits"], "signed": bool(acc.get("hmac_key"))}


@bp.get("/accounts")
def list_accounts():
    """Every account (keys masked)."""
    return ok([_account_view(a) for a in _svc().store.list_accounts()])


@bp.put("/accounts/<path:key>")  # path: keys may hold "/" (sent as %2F)
def put_account(key: str):
    """Create or change an account: {"credits": int, "webhookHmacKey": str|null}."""
    return ok(_account_view(_put_account(_svc(), key, _json())))


@bp.delete("/accounts/<path:key>")
def delete_account(key: str):
    """Remove a key: its requests then answer 401."""
    if not _svc().store.delete_account(key):
        return fail(404, "no such account")
    return ok(None, "deleted")


# -- settings --------------------------------------------------------------------------------------
@bp.get("/settings")
def get_settings():
    """The settings in force (configured defaults overlaid with changes)."""
    return ok(_svc().settings())


@bp.patch("/settings")
def patch_settings():
    """Change settings at run time: rate_limit, rate_window, cover_cost, maintenance, latency, ..."""
    return ok(update_settings(_svc(), _json()))


# -- faults and scenarios -------------------------------------------------------------------------
@bp.get("/scenarios")
def scenarios():
    """The named task scenarios, and the codes that can be forced."""
    return ok({"scenarios": list(NAMES), "codes": list(ERROR_CODES)})


def _fault_view(f: dict) -> dict:
    kind = "code" if f["kind"].startswith("code") else f["kind"]  # code@PATH: a code for one endpoint
    return {**f, "kind": kind, "key": f["key"] if f["key"] == "*" else mask_key(f["key"])}


@bp.post("/faults")
def post_fault():
    """Arm a fault for the next `count` requests (code) or tasks (scenario) of `key`."""
    return ok(_fault_view(arm(_svc(), _json())), "armed")


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
    body = _json()
    unknown = sorted(map(str, set(body) - {"seconds"}))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; advance takes seconds")
    seconds = number(body, "seconds", None, 0, 10**9)
    svc.sync_clock()  # from the shared time, if another instance moved it
    now = svc.clock.advance(seconds)
    svc.share_clock()
    return ok({"now": now, "virtual": True})


# -- tasks, requests, callbacks ---------------------------------------------------------------------
def _task_view(task: dict) -> dict:
    return {"taskId": task["taskId"], "key": mask_key(task["key"]), "status": task["status"],
            "stage": task["stage"], "scenario": task["scenario"], "callBackUrl": task["callBackUrl"],
            "model": task["model"], "created_at": task["created_at"], "expires_at": task["expires_at"],
            "delivery": _delivery_state(task), "plan": task["plan"]}


def _delivery_state(task: dict) -> str:
    """abandoned (a callback failed 1 + 3 retries), none (a scenario that sends none), delivered
    (the last stage's callback got through), or active."""
    if task["delivery"] == "abandoned":
        return "abandoned"
    if not Scenario.from_dict(task["scenario"]).sends_callbacks:
        return "none"
    return "delivered" if task.get("delivered_through", -1) >= len(task["plan"]) - 1 else "active"


@bp.get("/tasks")
def list_tasks():
    """Tasks, newest first; filters: key, status, limit."""
    status = _choice_arg("status", TASK_STATUSES)
    tasks = _svc().store.list_tasks(request.args.get("key"), status, _int_arg("limit", 100))
    return ok([_task_view(t) for t in tasks])


@bp.get("/tasks/<task_id>")
def get_task(task_id: str):
    """One task: its record, its record-info view, and its pending jobs."""
    svc = _svc()
    task = svc.store.get_task(task_id)
    if task is None:
        return fail(404, "no such task")
    return ok({**_task_view(task), "recordInfo": lifecycle.record_info(task, svc.clock.now()),
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
    """Received API requests, newest first; filters: path, code, task_id, limit."""
    code = _int_arg("code", None)
    entries = _svc().journal.read(_int_arg("limit", 100), path=request.args.get("path"), code=code,
                                  task_id=request.args.get("task_id"))
    return ok(entries)


@bp.get("/callbacks")
def callbacks_log():
    """Callback delivery attempts, newest first; filters: task_id, stage, limit."""
    entries = _svc().store.read_log("attempts", _int_arg("limit", 100), task_id=request.args.get("task_id"),
                                    stage=_choice_arg("stage", CALLBACK_STAGES))
    return ok(entries)
