"""Changing a running fake's state, checked: settings, accounts and faults.

One place for these rules, used by the control API (control.py) and scenario files
(scenario_file.py). Errors are BadRequest with a sentence saying what is wrong.
"""

from __future__ import annotations

import math
import uuid

from .config import mask_key
from .envelope import TRANSPORTS
from .faults import API_PATHS, ERROR_CODES, code_kind
from .scenarios import JOIN as SCENARIO_JOIN, NAMES as SCENARIO_NAMES
from .scenarios import Scenario


class BadRequest(ValueError):
    pass


SETTING_TYPES = {
    "rate_limit": int, "rate_window": float, "cover_cost": int, "record_info_per_second": int,
    "maintenance": bool, "maintenance_window": list, "latency": dict, "default_scenario": str,
}


def number(body: dict, name: str, default=None, lo: float = 0, hi: float = float("inf")):
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{name}: a number from {lo:g} to {hi:g} is required (got {value!r})")
    return value


def whole(body: dict, name: str, default=None, lo: int = 0, hi: int = 10**12) -> int:
    """A whole number (5 or 5.0, not 5.5: a count or a balance is never silently rounded)."""
    value = body.get(name, default)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and (isinstance(value, int) or value.is_integer()) and lo <= value <= hi)
    if not ok:
        raise BadRequest(f"{name}: a whole number from {lo} to {hi} is required (got {value!r})")
    return int(value)


def _finite(value) -> bool:
    """A number that is a finite double (a YAML integer with 400 digits is not: no OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def scenario_name(value, what: str) -> str:
    """A scenario's name, or names joined by "+", exactly as documented (not null, "", or padded)."""
    if not isinstance(value, str):
        raise BadRequest(f"{what}: a scenario name is required (got {value!r}); known: {', '.join(SCENARIO_NAMES)}")
    for part in value.split(SCENARIO_JOIN):
        if part not in SCENARIO_NAMES:
            raise BadRequest(f"{what}: unknown scenario {part!r}; known: {', '.join(SCENARIO_NAMES)} "
                             f"(combine them with {SCENARIO_JOIN}, e.g. fail-531{SCENARIO_JOIN}duplicate-callbacks)")
    return value


def mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: a JSON object (mapping) is required (got {value!r})")
    return value


def check_setting(svc, name: str, value):
    if name not in SETTING_TYPES:
        raise BadRequest(f"unknown setting {name!r}; known: {', '.join(SETTING_TYPES)}")
    if value is None and name in ("maintenance_window", "latency"):
        return None
    if name == "maintenance":
        if not isinstance(value, bool):
            raise BadRequest("maintenance: true or false")
        return value
    if name == "maintenance_window":  # [start, end] on the fake's clock, or {"start_in", "duration"}
        now = svc.clock.now()
        if isinstance(value, dict):
            if set(value) - {"start_in", "duration"}:
                raise BadRequest(f"maintenance_window: {{start_in, duration}} seconds (got {value!r})")
            start = now + number(value, "start_in", 0, 0, 10**9)
            return [start, start + number(value, "duration", None, 0, 10**9)]
        if isinstance(value, list) and len(value) == 2 and all(_finite(v) for v in value) \
                and value[0] <= value[1]:
            return [float(value[0]), float(value[1])]
        raise BadRequest("maintenance_window: [start, end] epoch seconds with start <= end, "
                         f"or {{start_in, duration}} seconds (got {value!r})")
    if name == "latency":
        if not isinstance(value, dict) or set(value) - {"min", "max"}:
            raise BadRequest(f"latency: {{min: seconds, max: seconds}} or null (got {value!r})")
        lo = number(value, "min", 0, 0, 60)
        return {"min": lo, "max": number(value, "max", lo, lo, 60)}
    if name == "default_scenario":
        try:
            return Scenario.parse(scenario_name(value, "default_scenario")).name
        except (ValueError, AttributeError) as exc:
            raise BadRequest(str(exc)) from None
    if SETTING_TYPES[name] is int:  # counts and prices: never silently rounded
        return whole({name: value}, name, None, 0, 10**9)
    return float(number({name: value}, name, None, 0, 10**9))


def arm(svc, body: dict) -> dict:
    """Validate and arm one fault: {"code": 402} or {"scenario": "fail-501"}, "count", "key"."""
    mapping(body, "fault")
    count = whole(body, "count", 1, 1, 10**6)
    key = body.get("key", "*")
    if not isinstance(key, str) or not key:
        raise BadRequest("key: an API key, or \"*\" for every key")
    fault = {"id": uuid.uuid4().hex[:12], "key": key, "count": count}
    unknown = sorted(str(k) for k in set(body) - {"code", "msg", "transport", "path", "scenario", "params",
                                                  "count", "key"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; a fault has code (+ msg, transport, path) or "
                         "scenario (+ params), count, key")
    if "code" in body and "scenario" in body:
        raise BadRequest("give code or scenario, not both (arm two faults for both)")
    if "code" in body:
        if type(body["code"]) is not int or body["code"] not in ERROR_CODES:  # 402.0 or true are not codes
            raise BadRequest(f"code: one of {', '.join(map(str, ERROR_CODES))} (got {body['code']!r})")
        fault.update(kind="code", code=body["code"])
        if "msg" in body:  # e.g. a 500 carrying a validation message, as real clients have seen
            if not isinstance(body["msg"], str) or not body["msg"].strip():
                raise BadRequest("msg: the message to answer with, a non-empty string")
            fault["msg"] = body["msg"]
        if "transport" in body:  # e.g. an HTTP 500, whatever the server's transport
            if body["transport"] not in TRANSPORTS:
                raise BadRequest(f"transport: one of {', '.join(TRANSPORTS)} (got {body['transport']!r})")
            fault["transport"] = body["transport"]
        if "path" in body:  # e.g. the next cover answers 409 while background polls go on answering
            if body["path"] not in API_PATHS:
                raise BadRequest(f"path: one of {', '.join(API_PATHS)} (got {body['path']!r})")
            fault.update(kind=code_kind(body["path"]), path=body["path"])
    elif "scenario" in body:
        try:
            scn = Scenario.parse(scenario_name(body["scenario"], "scenario"), body.get("params"))
        except (ValueError, AttributeError, TypeError) as exc:
            raise BadRequest(str(exc)) from None
        fault.update(kind="scenario", scenario=scn.name, params=scn.params)
    else:
        raise BadRequest("give either code (the next requests answer it) or scenario (the next tasks play it)")
    for name in ("msg", "transport", "path"):
        if name in body and "code" not in body:
            raise BadRequest(f"{name} goes with code (how the forced code is answered)")
    if "params" in body and fault["kind"] != "scenario":
        raise BadRequest("params goes with scenario (delay, seconds)")
    svc.store.arm_fault(fault)
    return fault


def update_settings(svc, body: dict) -> dict:
    changes = {name: check_setting(svc, name, value) for name, value in mapping(body, "settings").items()}
    svc.store.update_settings(changes)
    return svc.settings()


def put_account(svc, key: str, body: dict) -> dict:
    """Create or change an account: {"credits": int, "webhookHmacKey": str|null}."""
    if not isinstance(key, str) or not key:
        raise BadRequest("an account needs a non-empty API key")
    mapping(body, f"account {mask_key(key)}")
    unknown = sorted(str(k) for k in set(body) - {"credits", "webhookHmacKey"})
    if unknown:
        raise BadRequest(f"account {mask_key(key)}: unknown field(s) {', '.join(unknown)}; known: credits, webhookHmacKey")
    current = svc.store.get_account(key) or {"credits": 0, "hmac_key": None}
    credits = whole(body, "credits", current["credits"], 0, 10**12)
    hmac_key = body.get("webhookHmacKey", current.get("hmac_key"))
    if hmac_key is not None and (not isinstance(hmac_key, str) or not hmac_key):
        raise BadRequest("webhookHmacKey: a non-empty string or null")
    svc.store.put_account(key, credits, hmac_key)
    return svc.store.get_account(key)
