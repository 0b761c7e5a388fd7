"""Issue 4: the control API under /_mock: every endpoint, as documented in control-openapi.yaml
(each answer checked against the document), bad input answered 400 with a reason and never
500, the admin token guard, the filters, and the Python client over HTTP and in-process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from contract.receiver import CallbackReceiver
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from conftest import AUTH, KEY, body, submit
from mock_server.control_client import ControlClient, ControlError
from mock_server.scenarios import NAMES, Scenario
from test_failures import T0, accepted, auth, credits, make_fake, record_info, serve  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "control-openapi.yaml").read_text())
METHODS = ("get", "put", "post", "delete", "patch")


# -- the document -------------------------------------------------------------------------------------
def node_path(ref: str) -> list[str]:
    return ref.lstrip("#/").split("/")


def resolve(node: dict) -> dict:
    while "$ref" in node:
        target = SPEC
        for part in node_path(node["$ref"]):
            target = target[part]
        node = target
    return node


def template_of(path: str) -> str:
    for template in SPEC["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not in control-openapi.yaml")


def check_documented(method: str, path: str, status: int, envelope) -> None:
    """The answer is one the document lists for this operation, and matches its schema."""
    template = template_of(path.split("?")[0])
    operation = SPEC["paths"][template].get(method.lower())
    assert operation, f"{method} {template} is not documented"
    assert str(status) in operation["responses"], \
        f"{method} {template} answered HTTP {status}; documented: {sorted(operation['responses'])}"
    response = resolve(operation["responses"][str(status)])
    schema = response["content"]["application/json"]["schema"]
    errors = sorted(Draft202012Validator({**schema, "components": SPEC["components"]}).iter_errors(envelope),
                    key=str)
    assert not errors, f"{method} {path} -> {status}: {errors[0].message} at {list(errors[0].absolute_path)}"
    assert envelope["code"] == status  # the control API mirrors the code in the HTTP status


class Checked:
    """The control API through a Flask test client, every answer checked against the document."""

    def __init__(self, client, token: str | None = None):
        self.client, self.token = client, token
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, path: str, payload=None, raw: str | None = None, headers=None):
        h = dict(headers or {})
        if self.token is not None:
            h.setdefault("X-Admin-Token", self.token)
        if raw is not None:
            r = self.client.open(path, method=method, data=raw, content_type="application/json", headers=h)
        else:
            r = self.client.open(path, method=method, json=payload, headers=h)
        envelope = r.get_json()
        assert envelope is not None, f"{method} {path}: not JSON: {r.data[:200]!r}"
        check_documented(method, path, r.status_code, envelope)
        self.seen.add((template_of(path.split("?")[0]), method.lower(), r.status_code))
        return r.status_code, envelope


@pytest.fixture
def mock(client) -> Checked:
    return Checked(client)


def ok(result) -> object:
    status, envelope = result
    assert (status, envelope["code"]) == (200, 200), envelope
    return envelope["data"]


def bad(result, reason: str, code: int = 400) -> str:
    status, envelope = result
    assert (status, envelope["code"], envelope["data"]) == (code, code, None), envelope
    assert reason in envelope["msg"], envelope["msg"]
    return envelope["msg"]


# ==================================================================================================
# The document itself
# ==================================================================================================
def test_the_document_is_valid_openapi_3_1():
    assert SPEC["openapi"].startswith("3.1")
    validate_openapi(SPEC)


def test_every_control_route_is_documented_and_nothing_else(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/_mock"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, ops in SPEC["paths"].items() for m in ops if m in METHODS}
    assert routes == documented


def test_documented_scenario_names_and_codes_are_the_fakes(mock):
    data = ok(mock("GET", "/_mock/scenarios"))
    schemas = SPEC["components"]["schemas"]
    assert data["scenarios"] == list(NAMES) == schemas["ScenarioName"]["enum"]
    assert data["codes"] == schemas["ForcedCode"]["enum"]


def test_the_documented_combination_pattern_takes_what_the_fake_plays():
    """Every name a combination can be written with matches the control API's Scenario pattern,
    and a string with an unknown part does not."""
    import itertools
    pattern = re.compile(SPEC["components"]["schemas"]["Scenario"]["pattern"])
    played = 0
    for size in (1, 2, 3):
        for parts in itertools.permutations(NAMES, size):
            name = "+".join(parts)
            assert pattern.fullmatch(name), name
            try:
                Scenario.parse(name)
                played += 1
            except ValueError:
                pass
    assert played > len(NAMES)
    for bad in ("", "+", "fail-531+", "+fail-531", "fail-531 +duplicate-callbacks", "fail-999", "fail-531,duplicate-callbacks"):
        assert not pattern.fullmatch(bad), bad


# ==================================================================================================
# Every endpoint, in a user's order, each answer as documented
# ==================================================================================================
def test_every_documented_operation_answers_as_documented(client, clock, delivery):
    mock = Checked(client)
    assert "fail-531" in ok(mock("GET", "/_mock/scenarios"))["scenarios"]
    health = ok(mock("GET", "/_mock/health"))
    assert (health["status"], health["clock"], health["now"]) == ("ok", "virtual", T0)

    # accounts
    assert ok(mock("PUT", "/_mock/accounts/team-key", {"credits": 30, "webhookHmacKey": "s3cret"})) == \
        {"key": "t…", "credits": 30, "signed": True}  # keys never shown in full
    accounts = ok(mock("GET", "/_mock/accounts"))
    assert {a["credits"] for a in accounts} == {1000, 30} and all(KEY not in a["key"] for a in accounts)
    assert credits(client, "team-key") == 30

    # settings
    settings = ok(mock("GET", "/_mock/settings"))
    assert settings == {"rate_limit": 20, "rate_window": 10.0, "cover_cost": 12, "record_info_per_second": 3,
                        "maintenance": False, "maintenance_window": None, "latency": None,
                        "default_scenario": "success"}
    changed = ok(mock("PATCH", "/_mock/settings", {"cover_cost": 10, "latency": {"min": 0, "max": 0},
                                                    "maintenance_window": {"start_in": 100, "duration": 10}}))
    assert changed["cover_cost"] == 10 and changed["maintenance_window"] == [T0 + 100, T0 + 110]
    assert ok(mock("GET", "/_mock/settings")) == changed

    # faults
    fault = ok(mock("POST", "/_mock/faults", {"scenario": "fail-531", "key": "team-key"}))
    assert fault["kind"] == "scenario" and fault["count"] == 1 and "team-key" not in fault["key"]
    ok(mock("POST", "/_mock/faults", {"code": 409, "count": 3}))
    assert [f["kind"] for f in ok(mock("GET", "/_mock/faults"))] == ["scenario", "code"]
    ok(mock("DELETE", "/_mock/faults"))
    assert ok(mock("GET", "/_mock/faults")) == []
    ok(mock("POST", "/_mock/faults", {"scenario": "fail-531", "key": "team-key"}))

    # a task, its journal, the clock
    task_id = accepted(client, headers=auth("team-key"))
    assert credits(client, "team-key") == 20
    assert ok(mock("GET", "/_mock/clock")) == {"now": T0, "virtual": True}
    assert ok(mock("POST", "/_mock/clock/advance", {"seconds": 2})) == {"now": T0 + 2, "virtual": True}
    task = ok(mock("GET", f"/_mock/tasks/{task_id}"))
    assert (task["status"], task["recordInfo"]["status"], task["scenario"]["name"]) == \
        ("TEXT_SUCCESS", "TEXT_SUCCESS", "fail-531")
    assert [j["kind"] for j in task["jobs"]] == ["stage"]
    assert ok(mock("POST", f"/_mock/tasks/{task_id}/fire"))["jobs"] >= 1
    assert ok(mock("GET", "/_mock/clock"))["now"] == T0 + 2  # fire does not move the clock
    assert ok(mock("GET", f"/_mock/tasks/{task_id}"))["recordInfo"]["errorCode"] == 531
    assert credits(client, "team-key") == 30  # refunded
    assert [t["taskId"] for t in ok(mock("GET", "/_mock/tasks"))] == [task_id]
    attempts = ok(mock("GET", "/_mock/callbacks"))
    assert [a["stage"] for a in attempts] == ["error", "text"]
    assert all(a["signed"] for a in attempts) and "X-Webhook-Signature" in delivery.calls[0]["headers"]
    requests = ok(mock("GET", "/_mock/requests"))
    assert [e["task_id"] for e in requests if e["path"] == "/api/v1/generate/upload-cover"] == [task_id]

    # remove a key, then reset everything
    ok(mock("DELETE", "/_mock/accounts/team-key"))
    assert submit(client, headers=auth("team-key"))[1]["code"] == 401
    ok(mock("POST", "/_mock/reset"))
    assert ok(mock("GET", "/_mock/tasks")) == [] and ok(mock("GET", "/_mock/callbacks")) == []
    assert ok(mock("GET", "/_mock/requests")) == [] and ok(mock("GET", "/_mock/faults")) == []
    assert ok(mock("GET", "/_mock/settings")) == settings
    assert [a["credits"] for a in ok(mock("GET", "/_mock/accounts"))] == [1000]
    assert ok(mock("GET", "/_mock/clock"))["now"] == T0 + 2  # the clock is not moved back

    documented = {(p, m) for p, ops in SPEC["paths"].items() for m in ops if m in METHODS}
    answered = {(p, m) for p, m, status in mock.seen if status == 200}
    assert answered == documented


def test_reset_gives_configured_keys_their_starting_balance_back(client, mock):
    accepted(client)
    ok(mock("PUT", f"/_mock/accounts/{KEY}", {"credits": 3}))
    ok(mock("POST", "/_mock/reset"))
    assert credits(client) == 1000


@pytest.mark.parametrize("answer", [200, 500])
def test_a_delivery_in_flight_during_a_reset_leaves_nothing_in_the_fresh_state(client, mock, clock, delivery,
                                                                              service, answer):
    """Its attempt is not journaled after the reset, and a failed one plans no retry: a test that
    resets between cases sees only its own callbacks."""
    import threading

    sending, release = threading.Event(), threading.Event()
    plain = type(delivery).__call__

    def slow(url, data, headers):
        sending.set()
        release.wait(10)
        return plain(delivery, url, data, headers)

    delivery.default = answer
    advancing = threading.Thread(target=clock.advance, args=(2,))
    service.scheduler.deliver = slow
    accepted(client)
    advancing.start()
    assert sending.wait(10)
    ok(mock("POST", "/_mock/reset"))
    release.set()
    advancing.join(10)
    assert len(delivery.calls) == 1  # it was sent
    assert ok(mock("GET", "/_mock/callbacks")) == [] and service.store.list_jobs() == []
    clock.advance(60)
    assert len(delivery.calls) == 1 and ok(mock("GET", "/_mock/callbacks")) == []


def test_put_account_keeps_what_is_not_given_and_null_turns_signing_off(client, mock, clock, delivery):
    ok(mock("PUT", "/_mock/accounts/team-key", {"webhookHmacKey": "k"}))
    assert credits(client, "team-key") == 0  # a new account starts with nothing
    assert ok(mock("PUT", "/_mock/accounts/team-key", {"credits": 12}))["signed"] is True
    assert ok(mock("PUT", "/_mock/accounts/team-key", {"webhookHmacKey": None}))["signed"] is False
    assert credits(client, "team-key") == 12
    task_id = accepted(client, headers=auth("team-key"))
    clock.advance(2)
    assert delivery.stages(task_id) == ["text"] and delivery.calls[0]["headers"] == {}


def test_account_keys_are_path_segments_url_encoded(client, app):
    ctl = ControlClient.in_process(app)
    ctl.put_account("team key/with+odd", credits=12)
    accepted(client, headers=auth("team key/with+odd"))
    ctl.delete_account("team key/with+odd")
    assert submit(client, headers=auth("team key/with+odd"))[1]["code"] == 401


def test_fire_a_delayed_callbacks_task_delivers_everything_now(client, mock, clock, delivery):
    task_id = accepted(client, headers={"Prefer": "scenario=delayed-callbacks"})
    clock.advance(8)
    assert delivery.calls == []
    ok(mock("POST", f"/_mock/tasks/{task_id}/fire"))
    assert delivery.stages(task_id) == ["text", "first", "complete"]


def test_fire_a_fresh_task_runs_every_stage_now_in_order(client, mock, delivery, clock):
    task_id = accepted(client)
    assert ok(mock("POST", f"/_mock/tasks/{task_id}/fire"))["jobs"] >= 1
    assert delivery.stages(task_id) == ["text", "first", "complete"]
    assert record_info(client, task_id)["data"]["status"] == "SUCCESS"
    assert clock.now() == T0


# ==================================================================================================
# Bad input: 400 with a reason, never 500
# ==================================================================================================
BAD = [
    # settings
    ("PATCH", "/_mock/settings", "[1, 2]", "JSON object"),
    ("PATCH", "/_mock/settings", "{not json", "not JSON"),
    ("PATCH", "/_mock/settings", "[" * 1100 + "]" * 1100, "not JSON: depth limit"),  # was a RecursionError (500)
    ("PATCH", "/_mock/settings", '{"maintenance_window": [0, 1' + "0" * 400 + "]}", "not JSON"),  # OverflowError
    ("PATCH", "/_mock/settings", '{"default_scenario": "\\ud800"}', "not JSON: no low surrogate"),
    ("PATCH", "/_mock/settings", {"default_scenario": None}, "a scenario name is required"),
    ("PATCH", "/_mock/settings", {"default_scenario": ""}, "unknown scenario ''"),
    ("PATCH", "/_mock/settings", {"default_scenario": " fail-400 "}, "unknown scenario ' fail-400 '"),
    ("PATCH", "/_mock/settings", {"rate_limt": 5}, "unknown setting 'rate_limt'"),
    ("PATCH", "/_mock/settings", {"rate_limit": "5"}, "rate_limit"),
    ("PATCH", "/_mock/settings", {"rate_limit": 1.5}, "whole number"),
    ("PATCH", "/_mock/settings", {"rate_limit": -1}, "rate_limit"),
    ("PATCH", "/_mock/settings", {"rate_window": True}, "rate_window"),
    ("PATCH", "/_mock/settings", {"cover_cost": None}, "cover_cost"),
    ("PATCH", "/_mock/settings", {"maintenance": "yes"}, "true or false"),
    ("PATCH", "/_mock/settings", {"maintenance_window": [5]}, "maintenance_window"),
    ("PATCH", "/_mock/settings", {"maintenance_window": [20, 10]}, "start <= end"),
    ("PATCH", "/_mock/settings", {"maintenance_window": [True, 10]}, "maintenance_window"),
    ("PATCH", "/_mock/settings", {"maintenance_window": {"start_in": -1, "duration": 5}}, "start_in"),
    ("PATCH", "/_mock/settings", {"maintenance_window": {"start_in": 1}}, "duration"),
    ("PATCH", "/_mock/settings", {"maintenance_window": {"start": 1, "duration": 5}}, "start_in, duration"),
    ("PATCH", "/_mock/settings", {"maintenance_window": "soon"}, "maintenance_window"),
    ("PATCH", "/_mock/settings", '{"maintenance_window": [0, Infinity]}', "not JSON"),
    ("PATCH", "/_mock/settings", {"latency": "fast"}, "latency"),
    ("PATCH", "/_mock/settings", {"latency": {"min": 61}}, "min"),
    ("PATCH", "/_mock/settings", {"latency": {"min": 2, "max": 1}}, "max"),
    ("PATCH", "/_mock/settings", {"latency": {"mn": 1}}, "latency"),
    ("PATCH", "/_mock/settings", '{"latency": {"min": NaN}}', "not JSON"),
    ("PATCH", "/_mock/settings", {"default_scenario": "explode"}, "unknown scenario 'explode'"),
    ("PATCH", "/_mock/settings", {"default_scenario": 5}, "scenario"),
    # faults
    ("POST", "/_mock/faults", {}, "give either code"),
    ("POST", "/_mock/faults", "[]", "JSON object"),
    ("POST", "/_mock/faults", {"code": 418}, "code: one of"),
    ("POST", "/_mock/faults", {"code": "402"}, "code: one of"),
    ("POST", "/_mock/faults", {"code": 402.0}, "code: one of"),
    ("POST", "/_mock/faults", {"code": True}, "code: one of"),
    ("POST", "/_mock/faults", {"code": 402, "count": 0}, "count"),
    ("POST", "/_mock/faults", {"code": 402, "count": 1.5}, "whole number"),
    ("POST", "/_mock/faults", {"code": 402, "key": ""}, "key"),
    ("POST", "/_mock/faults", {"code": 402, "key": 7}, "key"),
    ("POST", "/_mock/faults", {"code": 402, "scenario": "fail-501"}, "not both"),
    ("POST", "/_mock/faults", {"cod": 402}, "unknown field(s) cod"),
    ("POST", "/_mock/faults", {"scenario": "explode"}, "unknown scenario"),
    ("POST", "/_mock/faults", {"scenario": None}, "a scenario name is required"),
    ("POST", "/_mock/faults", {"scenario": ""}, "unknown scenario ''"),
    ("POST", "/_mock/faults", {"code": 409, "params": {"delay": 5}}, "params goes with scenario"),
    ("POST", "/_mock/faults", {"code": 409, "params": "junk"}, "params goes with scenario"),
    ("POST", "/_mock/faults", '{"code": 409, "msg": "\\ud800"}', "not JSON"),
    ("POST", "/_mock/faults", {"scenario": 5}, "scenario"),
    ("POST", "/_mock/faults", {"scenario": ["fail-501"]}, "scenario"),
    ("POST", "/_mock/faults", {"scenario": "fail-501", "params": {"delay": 5}}, "takes no parameters"),
    ("POST", "/_mock/faults", {"scenario": "delayed-callbacks", "params": {"delai": 5}}, "takes only delay"),
    ("POST", "/_mock/faults", {"scenario": "delayed-callbacks", "params": {"delay": -1}}, "delay"),
    ("POST", "/_mock/faults", {"scenario": "empty-files", "params": {"seconds": "5"}}, "seconds"),
    ("POST", "/_mock/faults", {"scenario": "empty-files", "params": "5"}, "params"),
    # accounts
    ("PUT", "/_mock/accounts/k", {"credits": -1}, "credits"),
    ("PUT", "/_mock/accounts/k", {"credits": "10"}, "credits"),
    ("PUT", "/_mock/accounts/k", {"credits": 1.5}, "whole number"),
    ("PUT", "/_mock/accounts/k", {"credits": 10**13}, "credits"),
    ("PUT", "/_mock/accounts/k", {"credit": 10}, "unknown field(s) credit"),
    ("PUT", "/_mock/accounts/k", {"webhookHmacKey": ""}, "webhookHmacKey"),
    ("PUT", "/_mock/accounts/k", {"webhookHmacKey": 5}, "webhookHmacKey"),
    ("PUT", "/_mock/accounts/k", "[1]", "JSON object"),
    ("PUT", "/_mock/accounts/k", '"k"', "JSON object"),
    # the clock
    ("POST", "/_mock/clock/advance", {}, "seconds"),
    ("POST", "/_mock/clock/advance", {"seconds": -1}, "seconds"),
    ("POST", "/_mock/clock/advance", {"seconds": "1"}, "seconds"),
    ("POST", "/_mock/clock/advance", '{"seconds": NaN}', "not JSON"),
    ("POST", "/_mock/clock/advance", {"seconds": 1, "x": 2}, "unknown field(s) x"),
    ("PUT", "/_mock/accounts/k", "[" * 1100 + "]" * 1100, "not JSON"),
    ("POST", "/_mock/clock/advance", {"seconds": 10**10}, "seconds"),
    # filters
    ("GET", "/_mock/tasks?status=DONE", None, "status: one of"),
    ("GET", "/_mock/tasks?limit=-1", None, "limit"),
    ("GET", "/_mock/tasks?limit=ten", None, "limit"),
    ("GET", "/_mock/tasks?limit=%C2%B2", None, "limit"),
    ("GET", "/_mock/requests?code=abc", None, "code"),
    ("GET", "/_mock/requests?limit=1.5", None, "limit"),
    ("GET", "/_mock/callbacks?stage=second", None, "stage: one of"),
    ("GET", "/_mock/callbacks?limit=", None, "limit"),
]


@pytest.mark.parametrize("method, path, payload, reason", BAD, ids=[f"{m} {p} {pl!r}"[:80] for m, p, pl, _ in BAD])
def test_bad_input_answers_400_with_a_reason(mock, method, path, payload, reason):
    before = ok(mock("GET", "/_mock/settings")), ok(mock("GET", "/_mock/faults"))
    if isinstance(payload, str):
        result = mock(method, path, raw=payload)
    else:
        result = mock(method, path, payload)
    bad(result, reason)
    assert (ok(mock("GET", "/_mock/settings")), ok(mock("GET", "/_mock/faults"))) == before  # nothing applied


def test_a_rejected_settings_change_applies_none_of_its_values(mock):
    bad(mock("PATCH", "/_mock/settings", {"rate_limit": 5, "latency": {"min": 99}}), "min")
    assert ok(mock("GET", "/_mock/settings"))["rate_limit"] == 20


def test_bad_input_with_a_non_json_content_type(client):
    r = client.patch("/_mock/settings", data="rate_limit=5", content_type="application/x-www-form-urlencoded")
    assert (r.status_code, r.get_json()["code"]) == (400, 400)


@pytest.mark.parametrize("method, path", [
    ("DELETE", "/_mock/accounts/nobody"),
    ("GET", "/_mock/tasks/nope"),
    ("POST", "/_mock/tasks/nope/fire"),
])
def test_unknown_account_or_task_answers_404(mock, method, path):
    bad(mock(method, path), "no such", code=404)


def test_unknown_control_path_answers_an_envelope_404(client):
    r = client.get("/_mock/nothing-here")
    assert r.status_code == 404 and r.get_json()["code"] == 404


def test_advancing_a_real_clock_answers_409(make_fake):
    fake = make_fake(clock="real")
    r = fake.client.post("/_mock/clock/advance", json={"seconds": 1})
    check_documented("POST", "/_mock/clock/advance", r.status_code, r.get_json())
    assert r.status_code == 409 and "--clock virtual" in r.get_json()["msg"]
    assert fake.ctl.clock()["virtual"] is False


# ==================================================================================================
# The admin token
# ==================================================================================================
@pytest.fixture
def guarded(make_fake):
    return make_fake(admin_token="t")


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Token": "wrong"}, {"X-Admin-Token": "T"},
                                     {"X-Admin-Token": "t "}, {"X-Admin-Token": "é"}, {"Authorization": "Bearer t"}],
                         ids=["missing", "wrong", "case", "space", "non-ascii", "bearer"])
def test_admin_token_missing_or_wrong_answers_401_on_every_endpoint(guarded, headers):
    for template, ops in SPEC["paths"].items():
        path = template.replace("{key}", KEY).replace("{task_id}", "x")
        for method in ops:
            if method not in METHODS:
                continue
            r = guarded.client.open(path, method=method.upper(), json={}, headers=headers)
            assert r.status_code == 401, (method, path, r.get_json())
            check_documented(method, path, 401, r.get_json())
            assert "X-Admin-Token" in r.get_json()["msg"]
    assert guarded.service.settings()["maintenance"] is False  # nothing was changed


def test_admin_token_right_answers_200(guarded):
    mock = Checked(guarded.client, token="t")
    assert ok(mock("PATCH", "/_mock/settings", {"cover_cost": 7}))["cover_cost"] == 7
    assert ok(mock("GET", "/_mock/health"))["status"] == "ok"
    ControlClient.in_process(guarded.app, admin_token="t").reset()


def test_admin_token_does_not_guard_the_faked_api(guarded):
    status, env = submit(guarded.client)
    assert env["code"] == 200


def test_no_admin_token_configured_means_no_header_needed(client):
    assert client.get("/_mock/health").status_code == 200


# ==================================================================================================
# Filters
# ==================================================================================================
def test_task_filters_key_status_limit(client, clock, mock):
    ok(mock("PUT", "/_mock/accounts/other-key", {"credits": 100}))
    mine = [accepted(client) for _ in range(3)]
    clock.advance(8)
    late = accepted(client)
    other = accepted(client, headers=auth("other-key"))
    ids = lambda q: [t["taskId"] for t in ok(mock("GET", "/_mock/tasks" + q))]  # noqa: E731
    assert ids("") == [other, late, *reversed(mine)]  # newest first
    assert ids(f"?key={KEY}") == [late, *reversed(mine)]
    assert ids("?key=other-key") == [other]
    assert ids("?key=nobody") == []
    assert ids("?status=SUCCESS") == list(reversed(mine))
    assert ids("?status=PENDING") == [other, late]
    assert ids(f"?status=PENDING&key={KEY}") == [late]
    assert ids("?limit=2") == [other, late]
    assert ids("?limit=0") == []


def test_request_filters_path_code_limit(client, mock):
    task_id = accepted(client)
    submit(client, body(callBackUrl=...))
    submit(client, headers={"Prefer": "code=409"})
    record_info(client, task_id)
    client.get("/api/v1/chat/credit", headers=AUTH)
    all_ = ok(mock("GET", "/_mock/requests"))
    assert [(e["path"].rsplit("/", 1)[-1], e["code"]) for e in all_] == [
        ("credit", 200), ("record-info", 200), ("upload-cover", 409), ("upload-cover", 422), ("upload-cover", 200)]
    assert all(KEY not in (e["key"] or "") for e in all_)  # keys masked
    covers = ok(mock("GET", "/_mock/requests?path=/api/v1/generate/upload-cover"))
    assert [e["code"] for e in covers] == [409, 422, 200]
    assert [e["path"] for e in ok(mock("GET", "/_mock/requests?code=422"))] == ["/api/v1/generate/upload-cover"]
    assert ok(mock("GET", "/_mock/requests?code=200&path=/api/v1/generate/upload-cover"))[0]["task_id"] == task_id
    assert len(ok(mock("GET", "/_mock/requests?limit=2"))) == 2
    assert ok(mock("GET", "/_mock/requests?code=455")) == []
    assert all(not e["path"].startswith("/_mock") for e in ok(mock("GET", "/_mock/requests")))


def test_request_entries_say_the_msg_and_the_task_asked_about(client, mock):
    """A forced 422 and a real one tell apart by msg; a poll names the taskId it asked about,
    known or not; ?task_id= keeps one task's requests (its cover and its polls)."""
    task_id, other = accepted(client), accepted(client)
    submit(client, headers={"Prefer": "code=422"})
    submit(client, body(title="x" * 81, customMode=True, style="rock", instrumental=True))
    record_info(client, task_id)
    record_info(client, other)
    client.get("/api/v1/generate/record-info?taskId=nosuchtask", headers=AUTH)
    client.get("/api/v1/generate/record-info", headers=AUTH)
    got = [(e["code"], e["msg"], e["task_id"]) for e in ok(mock("GET", "/_mock/requests?limit=6"))]
    forced, real = got[5][1], got[4][1]
    assert got[:3] == [(422, "Please enter taskId (query parameter)", None),
                       (422, "recordInfo is null", "nosuchtask"), (200, "success", other)]
    assert forced != real and "title" in real and "80" in real and "title" not in forced
    mine = ok(mock("GET", f"/_mock/requests?task_id={task_id}"))
    assert [(e["path"].rsplit("/", 1)[-1], e["code"]) for e in mine] == [("record-info", 200), ("upload-cover", 200)]
    assert ok(mock("GET", "/_mock/requests?task_id=none-such")) == []


def test_a_bug_of_the_fake_is_journaled_with_its_own_msg(client, mock, service, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "record_info", broken)
    r = client.get("/api/v1/generate/record-info?taskId=x", headers=AUTH)
    assert (r.status_code, r.get_json()["code"]) == (500, 500)
    (entry,) = ok(mock("GET", "/_mock/requests?code=500"))
    assert entry["msg"] == "Internal Error (kie-mock bug): RuntimeError" == r.get_json()["msg"]


def test_api_requests_no_handler_saw_are_journaled_too(client, mock):
    """A client's typo of a path, a wrong method: in /_mock/requests with the answer they got
    (the control API's own requests and the files are not journaled)."""
    assert client.post("/api/v1/generate/upload_cover", json={}, headers=AUTH).status_code == 404
    assert client.get("/api/v1/generate/upload-cover", headers=AUTH).status_code == 405
    client.get("/files/nope/audio.mp3")
    client.get("/_mock/nope")
    got = [(e["method"], e["path"], e["http_status"], e["code"], e["key"]) for e in ok(mock("GET", "/_mock/requests"))]
    assert got == [("GET", "/api/v1/generate/upload-cover", 405, 404, None),
                   ("POST", "/api/v1/generate/upload_cover", 404, 404, None)]
    assert [e["path"] for e in ok(mock("GET", "/_mock/requests?code=404"))] == [
        "/api/v1/generate/upload-cover", "/api/v1/generate/upload_cover"]


@pytest.mark.parametrize("store", ["memory", "sqlite::memory:"])
@pytest.mark.parametrize("limit", [2**31 - 2, 2**31 - 1, 2**31, 2**63 - 1, 2**63])
def test_a_huge_limit_means_all_on_every_store(make_fake, store, limit):
    """?limit= is taken as at most 2**31 - 1 (LIMIT_MAX): one below, at and above it, and at
    and above SQLite's last integer, every list answers in full."""
    fake = make_fake(store=store)
    fake.ctl.put_account("k2", credits=100)
    task_id = accepted(fake.client, headers=auth("k2"))
    fake.clock.advance(3)
    for what in ("tasks", "requests", "callbacks"):
        r = fake.client.get(f"/_mock/{what}?limit={limit}")
        assert (r.status_code, r.get_json()["code"]) == (200, 200), (what, r.get_json())
        assert len(r.get_json()["data"]) >= 1, what
    assert [t["taskId"] for t in fake.client.get(f"/_mock/tasks?limit={limit}").get_json()["data"]] == [task_id]


def test_callback_filters_task_stage_limit(client, clock, delivery, mock):
    one = accepted(client)
    two = accepted(client, headers={"Prefer": "scenario=fail-500"})
    clock.advance(10)
    attempts = lambda q: [(a["task_id"], a["stage"]) for a in ok(mock("GET", "/_mock/callbacks" + q))]  # noqa: E731
    assert attempts(f"?task_id={one}") == [(one, "complete"), (one, "first"), (one, "text")]
    assert attempts(f"?task_id={two}") == [(two, "error"), (two, "text")]
    assert sorted(attempts("?stage=text")) == sorted([(one, "text"), (two, "text")])
    assert attempts("?stage=error") == [(two, "error")]
    assert attempts(f"?task_id={one}&stage=error") == []
    assert len(attempts("?limit=1")) == 1 and attempts("?limit=1") == [(one, "complete")]


# ==================================================================================================
# The Python client (mock_server.control_client)
# ==================================================================================================
def exercise(ctl: ControlClient, submit_cover) -> None:
    """Every method of the client, against whatever fake it talks to."""
    ctl.reset()
    assert ctl.health()["status"] == "ok"
    assert ctl.settings()["rate_limit"] == 20
    assert ctl.update_settings(rate_limit=5)["rate_limit"] == 5
    assert ctl.maintenance(True)["maintenance"] is True
    assert submit_cover(KEY)["code"] == 455
    assert ctl.maintenance(False)["maintenance"] is False
    window = ctl.maintenance_window(start_in=60, duration=5)["maintenance_window"]
    assert window[1] - window[0] == 5
    assert ctl.latency(0.0, 0.0)["latency"] == {"min": 0.0, "max": 0.0}
    assert ctl.latency(None)["latency"] is None
    assert ctl.put_account("team-key", credits=11)["credits"] == 11
    assert submit_cover("team-key")["code"] == 402
    assert ctl.set_credits("team-key", 24)["credits"] == 24
    assert {a["credits"] for a in ctl.accounts()} == {1000, 24}
    assert "fail-501" in ctl.scenarios()["scenarios"]
    assert ctl.arm(code=409, count=2, key="team-key")["count"] == 2
    assert ctl.arm(scenario="delayed-callbacks", params={"delay": 5})["params"] == {"delay": 5}
    assert [f["kind"] for f in ctl.faults()] == ["code", "scenario"]
    assert submit_cover("team-key")["code"] == 409
    ctl.clear_faults()
    assert ctl.faults() == []
    task_id = submit_cover("team-key")["data"]["taskId"]
    assert [t["taskId"] for t in ctl.tasks(key="team-key", status="PENDING", limit=5)] == [task_id]
    assert ctl.task(task_id)["status"] == "PENDING"
    now = ctl.now()
    assert ctl.clock() == {"now": now, "virtual": True}
    assert ctl.advance(2) == now + 2
    assert ctl.task(task_id)["status"] == "TEXT_SUCCESS"
    assert ctl.fire(task_id) >= 1
    assert ctl.task(task_id)["status"] == "SUCCESS"
    attempts = ctl.callbacks(task_id=task_id)
    assert sorted(a["stage"] for a in attempts) == ["complete", "first", "text"]
    assert ctl.callbacks(task_id=task_id, stage="first", limit=1)[0]["stage"] == "first"
    assert [r["code"] for r in ctl.requests(path="/api/v1/generate/upload-cover", limit=3)] == [200, 409, 402]
    assert len(ctl.requests(code=455)) == 1
    ctl.delete_account("team-key")
    assert submit_cover("team-key")["code"] == 401
    with pytest.raises(ControlError) as err:
        ctl.arm(code=418)
    assert err.value.status == 400 and "code: one of" in err.value.msg
    with pytest.raises(ControlError) as err:
        ctl.task("nope")
    assert err.value.status == 404
    ctl.reset()
    assert ctl.tasks() == []


def test_control_client_in_process(app, client):
    def submit_cover(key):
        return client.post("/api/v1/generate/upload-cover", json=body(), headers=auth(key)).get_json()

    exercise(ControlClient.in_process(app), submit_cover)
    exercise(ControlClient.in_process(client), submit_cover)  # a test client works as well


def test_control_client_over_http_against_a_real_server_with_an_admin_token():
    import urllib3

    receiver = CallbackReceiver().start()  # answers 200, records every callback
    with serve("--clock", "virtual", "--admin-token", "t") as base:
        http = urllib3.PoolManager(retries=False)

        def submit_cover(key):
            r = http.request("POST", base + "/api/v1/generate/upload-cover",
                             body=json.dumps(body(callBackUrl=receiver.url("cb"))).encode(),
                             headers={**auth(key), "Content-Type": "application/json"})
            return json.loads(r.data)

        with ControlClient(base, admin_token="t") as ctl:
            exercise(ctl, submit_cover)
        with pytest.raises(ControlError) as err:
            ControlClient(base, admin_token="wrong").health()
        assert err.value.status == 401 and "X-Admin-Token" in str(err.value)
        with pytest.raises(ControlError):
            ControlClient(base).reset()
    receiver.stop()
    assert receiver.stages("cb") == ["text", "first", "complete"]


def test_control_client_says_when_the_answer_is_not_the_fake():
    ctl = ControlClient(transport=lambda method, path, data, headers: (200, b"<html>hello</html>"))
    with pytest.raises(ControlError) as err:
        ctl.health()
    assert "not a JSON answer" in str(err.value)


def test_control_client_needs_exactly_one_target():
    with pytest.raises(ValueError):
        ControlClient()


def test_odd_paths_limits_and_methods_on_the_control_api(client, mock):
    """A ?limit= past SQLite's integers is "all" (it was an OverflowError, a 500); a key with "/"
    (sent as %2F) at its start is refused, not taken for another account ("//" was merged into
    "/" by a 308 to /_mock/accounts/abc); a wrong method answers 405 with code 405 (the control API's statuses
    mirror its codes)."""
    assert ok(mock("PUT", "/_mock/accounts/abc", {"credits": 7}))["credits"] == 7
    for path in ("/_mock/tasks?limit=9223372036854775808", "/_mock/requests?limit=" + "9" * 30,
                 "/_mock/callbacks?limit=" + "9" * 30, "/_mock/tasks?limit=" + "9" * 5000,  # int(): 4300 digits
                 "/_mock/requests?code=" + "4" * 5000):
        assert isinstance(ok(mock("GET", path)), list), path
    accepted(client)
    accepted(client)
    for limit, n in (("0" * 5000 + "1", 1), ("0" * 5000, 0), ("9" * 5000, 2)):  # leading zeros: the same number
        assert len(ok(mock("GET", "/_mock/tasks?limit=" + limit))) == n
    for method in ("PUT", "DELETE"):  # a key that begins with "/" matches no route: 404, and no redirect
        r = client.open("/_mock/accounts/%2Fabc", method=method, json={"credits": 1})
        assert (r.status_code, r.get_json()["code"]) == (404, 404) and "Location" not in r.headers
    assert client.get("/api/v1/chat/credit", headers={"Authorization": "Bearer abc"}).get_json()["data"] == 7
    assert ok(mock("PUT", "/_mock/accounts/a%2Fb", {"credits": 3}))["credits"] == 3  # "/" inside a key is fine
    r = client.delete("/_mock/health")
    assert (r.status_code, r.get_json()["code"], r.headers["Allow"]) == (405, 405, "GET, HEAD")
    r = client.delete("/api/v1/chat/credit", headers=AUTH)  # the faked API keeps its own way
    assert (r.status_code, r.get_json()["code"]) == (405, 404)


def test_a_body_over_the_limit_on_the_control_api_is_a_400_like_its_other_refusals(mock):
    status, envelope = mock("PUT", "/_mock/accounts/k", raw='{"credits": 1, "pad": "' + "x" * (2 << 20) + '"}')
    assert (status, envelope["code"]) == (400, 400) and "too large" in envelope["msg"]


def test_a_tasks_delivery_state_follows_its_callbacks(client, clock, delivery, mock):
    """active while callbacks are to come, delivered once the last got through, abandoned after
    1 + 3 failed attempts, none for a scenario that sends none."""
    def state(task_id):
        return ok(mock("GET", f"/_mock/tasks/{task_id}"))["delivery"]

    task_id = accepted(client)
    assert state(task_id) == "active"
    clock.advance(2.5)  # text delivered
    assert delivery.stages(task_id) == ["text"] and state(task_id) == "active"
    clock.advance(60)
    assert delivery.stages(task_id) == ["text", "first", "complete"] and state(task_id) == "delivered"
    assert [t["delivery"] for t in ok(mock("GET", "/_mock/tasks"))] == ["delivered"]

    delivery.default = 500
    failing = accepted(client)
    clock.advance(60)
    assert delivery.stages(failing) == ["text"] * 4 and state(failing) == "abandoned"

    quiet = accepted(client, headers={**AUTH, "Prefer": "scenario=no-callbacks"})
    clock.advance(60)
    assert delivery.stages(quiet) == [] and state(quiet) == "none"
