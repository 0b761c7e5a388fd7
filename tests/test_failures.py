"""Issue 4: every documented code reached the way a user reaches it, and every late failure
seen the way a client sees it (callbacks and record-info), over HTTP.

402, 429, 401, 422 and 455 come from real state (balances, the rate window, keys, bad
requests, maintenance), 451 also from a real fetch of uploadUrl; the others from the
switches a user has: `Prefer: code=N`, armed faults, named scenarios. Time is the virtual
clock's, so every boundary is exact.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import urllib3

from conftest import AUTH, KEY, RecordingDelivery, body, custom_body, submit
from mock_server import api, lifecycle, media
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config
from mock_server.control_client import ControlClient, ControlError
from mock_server.faults import ERROR_CODES
from mock_server.spec import validator

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_750_000_000.0  # the `clock` fixture's start
COVER = "/api/v1/generate/upload-cover"
CALLBACK = validator("callback.json")
RECORD = validator("record-info-response.json")


# -- helpers --------------------------------------------------------------------------------------
def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def record_info(client, task_id: str, key: str = KEY) -> dict:
    return client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=auth(key)).get_json()


def credits(client, key: str = KEY) -> int:
    env = client.get("/api/v1/chat/credit", headers=auth(key)).get_json()
    assert env["code"] == 200, env
    return env["data"]


def accepted(client, payload=None, headers=None) -> str:
    status, env = submit(client, payload, headers)
    assert (status, env["code"]) == (200, 200), env
    return env["data"]["taskId"]


def assert_rejected(status_env, code: int, http: int = 200, msg_part: str | None = None) -> dict:
    """Errors ride as HTTP 200 with the code in the envelope (the real transport), 429 as HTTP 429."""
    status, env = status_env
    assert (status, env["code"], env["data"]) == (http, code, None), env
    assert env["msg"] and (msg_part is None or msg_part in env["msg"]), env["msg"]
    return env


@pytest.fixture
def ctl(app) -> ControlClient:
    return ControlClient.in_process(app)


@pytest.fixture
def make_fake():
    """A separate in-process fake with its own Config (virtual clock, recorded delivery)."""
    apps = []

    def make(**overrides):
        cfg = Config(**{"clock": "virtual", **overrides})
        clock, delivery = (VirtualClock(start=T0) if cfg.clock == "virtual" else None), RecordingDelivery()
        app = create_app(cfg, clock=clock, deliver=delivery)
        apps.append(app)
        return SimpleNamespace(app=app, client=app.test_client(), clock=clock, delivery=delivery,
                               ctl=ControlClient.in_process(app), service=app.extensions["kie_mock"])

    yield make
    for app in apps:
        app.extensions["kie_mock"].scheduler.stop()


# ==================================================================================================
# 401: from real state (no key, a malformed header, an unknown key, a deleted key)
# ==================================================================================================
@pytest.mark.parametrize("headers, reason", [
    ({}, "missing Authorization"),
    ({"Authorization": f"Basic {KEY}"}, "malformed"),
    ({"Authorization": "Bearer"}, "malformed"),
    ({"Authorization": "Bearer not-a-key"}, "unknown API key"),
])
def test_401_without_a_valid_key_on_every_endpoint(client, headers, reason):
    for method, path in [("POST", COVER), ("GET", "/api/v1/generate/record-info?taskId=x"),
                         ("GET", "/api/v1/chat/credit")]:
        r = client.open(path, method=method, json=body(), headers=headers)
        assert_rejected((r.status_code, r.get_json()), 401, msg_part=reason)
    assert credits(client) == 1000  # nothing charged to anyone


def test_401_once_the_key_is_deleted_through_the_control_api(client, ctl):
    ctl.put_account("team-key", credits=100)
    task_id = accepted(client, headers=auth("team-key"))
    ctl.delete_account("team-key")
    assert_rejected(submit(client, headers=auth("team-key")), 401, msg_part="unknown API key")
    r = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=auth("team-key"))
    assert r.get_json()["code"] == 401


def test_401_in_status_transport_is_http_401(make_fake):
    fake = make_fake(transport="status")
    r = fake.client.post(COVER, json=body(), headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.get_json()["code"]) == (401, 401)


# ==================================================================================================
# 402: from the balance (a cover costs 12)
# ==================================================================================================
@pytest.mark.parametrize("balance, ok, left", [(11, False, 11), (12, True, 0), (13, True, 1)])
def test_402_at_the_balance_boundary(client, ctl, balance, ok, left):
    ctl.put_account("team-key", credits=balance)
    result = submit(client, headers=auth("team-key"))
    if ok:
        assert result[1]["code"] == 200
    else:
        assert_rejected(result, 402, msg_part=f"a cover costs 12 credits, the balance is {balance}")
    assert credits(client, "team-key") == left
    assert len(ctl.tasks(key="team-key")) == int(ok)


def test_402_after_spending_the_balance_then_a_top_up_works(client, ctl):
    ctl.put_account("team-key", credits=24)
    accepted(client, headers=auth("team-key"))
    accepted(client, headers=auth("team-key"))
    assert_rejected(submit(client, headers=auth("team-key")), 402)
    assert credits(client, "team-key") == 0
    ctl.set_credits("team-key", 12)
    accepted(client, headers=auth("team-key"))


def test_402_follows_the_configured_cover_cost(client, ctl):
    ctl.put_account("team-key", credits=11)
    ctl.update_settings(cover_cost=5)
    accepted(client, headers=auth("team-key"))
    accepted(client, headers=auth("team-key"))
    assert_rejected(submit(client, headers=auth("team-key")), 402, msg_part="costs 5 credits, the balance is 1")


def test_invalid_requests_are_never_charged(client):
    assert_rejected(submit(client, body(callBackUrl=...)), 422)
    assert credits(client) == 1000


# ==================================================================================================
# 422: from bad requests
# ==================================================================================================
def test_422_missing_callbackurl_as_seen_live(client):
    assert_rejected(submit(client, body(callBackUrl=...)), 422, msg_part="Please enter callBackUrl")


@pytest.mark.parametrize("kwargs, reason", [
    ({"data": "{not json", "content_type": "application/json"}, "not valid JSON"),
    ({"data": json.dumps(body()), "content_type": "text/plain"}, "Content-Type must be application/json"),
    ({"data": "", "content_type": "application/json"}, "empty"),
])
def test_422_for_a_body_that_is_not_a_json_object(client, kwargs, reason):
    r = client.post(COVER, headers=AUTH, **kwargs)
    assert_rejected((r.status_code, r.get_json()), 422, msg_part=reason)


def test_422_for_an_unknown_task_and_a_missing_taskid(client):
    r = client.get("/api/v1/generate/record-info?taskId=nope", headers=AUTH)
    assert r.status_code == 200 and r.get_json() == {"code": 422, "msg": "recordInfo is null", "data": None}
    r = client.get("/api/v1/generate/record-info", headers=AUTH)
    assert_rejected((r.status_code, r.get_json()), 422, msg_part="taskId")


@pytest.mark.parametrize("prefer, reason", [
    ("code=418", "Prefer: code must be one of"),
    ("code=" + "4" * 5000, "Prefer: code must be one of"),  # was a 500: int() refuses over 4300 digits
    ("code=\xb2", "Prefer: code must be one of"),  # a superscript 2: isdigit() yet no int (was a 500)
    ("code=0409", "Prefer: code must be one of"),
    ("scenario=explode", "unknown scenario 'explode'"),
    ("latency=61", "from 0 to 60"),
    ("latency=60.001", "from 0 to 60"),
    *((f"latency={v}", "latency must be seconds") for v in ("1_0", "inf", "nan", "-1", "1e1", "", "0x10")),
    ("scenario=delayed-callbacks, delay=1_0", "delay must be a number of seconds"),
    ("delay=5", "parameter of a scenario"),
    ("scenario=fail-501, delay=5", "takes no parameters"),
    ("code=500, transport=http", "transport must be one of real, status"),
    ("transport=status", "add code=N"),
])
def test_422_for_a_prefer_header_the_fake_cannot_honour(client, prefer, reason):
    assert_rejected(submit(client, headers={"Prefer": prefer}), 422, msg_part=reason)


@pytest.mark.parametrize("prefer", ["code=409, transport=status", "code=409; transport=status",
                                    'code="409";transport=status', "respond-async, code=409; transport=status"])
def test_prefer_parameters_by_comma_or_semicolon(client, prefer):
    """RFC 7240 writes parameters of one preference after ";", preferences apart with ",": both
    mean the same to the fake (a client library may join them either way)."""
    r = client.post(COVER, json=body(), headers={**AUTH, "Prefer": prefer})
    assert (r.status_code, r.get_json()["code"]) == (409, 409)


def test_prefer_scenario_parameter_after_a_semicolon(client, clock, service):
    task_id = accepted(client, headers={**AUTH, "Prefer": "scenario=empty-files; seconds=5"})
    assert service.store.get_task(task_id)["scenario"] == {"name": "empty-files", "params": {"seconds": 5.0}}


# ==================================================================================================
# 429: from the rate window (20 new tasks per 10 s per account)
# ==================================================================================================
def test_429_on_the_21st_cover_with_retry_after_then_accepted_once_the_window_passes(client, clock):
    for _ in range(20):
        accepted(client)
    r = client.post(COVER, json=body(), headers=AUTH)
    env = assert_rejected((r.status_code, r.get_json()), 429, http=429, msg_part="at most 20 new tasks per 10 s")
    assert r.headers["Retry-After"] == "10"
    clock.advance(9)
    r = client.post(COVER, json=body(), headers=AUTH)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "1")
    clock.advance(1)
    accepted(client)
    assert credits(client) == 1000 - 21 * 12  # the two 429s cost nothing
    assert env["msg"].startswith("Rate limited")


def test_the_window_slides(client, clock):
    for _ in range(10):
        accepted(client)
    clock.advance(5)
    for _ in range(10):
        accepted(client)
    clock.advance(5)  # the first ten leave the window, the last ten stay 5 s more
    for _ in range(10):
        accepted(client)
    r = client.post(COVER, json=body(), headers=AUTH)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "5")


@pytest.mark.parametrize("waited, header", [(5.0, "5"), (5.9995, "5"), (6.0, "4"), (6.5, "4")])
def test_retry_after_is_rounded_up_so_waiting_it_out_is_enough(client, clock, waited, header):
    """4.0005 s left says 5, not 4: a client that sleeps Retry-After must get in."""
    for _ in range(20):
        accepted(client)
    clock.advance(waited)
    r = client.post(COVER, json=body(), headers=AUTH)
    assert (r.status_code, r.headers["Retry-After"]) == (429, header)  # the seconds left, rounded up
    clock.advance(int(header))
    accepted(client)


def test_rejected_requests_do_not_consume_the_window(client, ctl):
    """422s (schema, JSON, content type), 402s, 401s and forced codes take no slot."""
    ctl.put_account("team-key", credits=0)
    team = auth("team-key")
    for _ in range(5):
        assert_rejected(submit(client, headers=team), 402)
        assert_rejected(submit(client, body(model="V9"), headers=team), 422)
        r = client.post(COVER, data="{", content_type="application/json", headers=team)
        assert r.get_json()["code"] == 422
        assert_rejected(submit(client, headers={**team, "Prefer": "code=500"}), 500)
    ctl.set_credits("team-key", 20 * 12)
    for _ in range(20):
        accepted(client, headers=team)
    assert_rejected(submit(client, headers=team), 429, http=429)
    assert credits(client, "team-key") == 0


def test_the_window_is_per_account(client, ctl):
    ctl.put_account("other-key", credits=1000)
    for _ in range(20):
        accepted(client)
    assert_rejected(submit(client), 429, http=429)
    accepted(client, headers=auth("other-key"))


def test_rate_limit_is_configurable_and_can_be_turned_off(client, ctl):
    ctl.update_settings(rate_limit=2, rate_window=60)
    accepted(client)
    accepted(client)
    r = client.post(COVER, json=body(), headers=AUTH)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "60")
    ctl.update_settings(rate_limit=0)
    for _ in range(25):
        accepted(client)


def test_429_on_record_info_past_three_polls_per_second_per_task(client, clock):
    task_id = accepted(client)
    for _ in range(3):
        assert record_info(client, task_id)["code"] == 200
    r = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH)
    assert (r.status_code, r.get_json()["code"], r.headers["Retry-After"]) == (429, 429, "1")
    clock.advance(1)
    assert record_info(client, task_id)["code"] == 200


# ==================================================================================================
# 455: maintenance, toggled and scheduled
# ==================================================================================================
def test_455_while_maintenance_is_on_for_every_endpoint(client, ctl):
    task_id = accepted(client)
    ctl.maintenance(True)
    assert_rejected(submit(client), 455, msg_part="maintenance")
    assert record_info(client, task_id)["code"] == 455
    assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"] == 455
    ctl.maintenance(False)
    accepted(client)
    assert credits(client) == 1000 - 2 * 12  # the 455 cost nothing


def test_455_in_status_transport_is_http_455(make_fake):
    fake = make_fake(transport="status")
    fake.ctl.maintenance(True)
    r = fake.client.post(COVER, json=body(), headers=AUTH)
    assert (r.status_code, r.get_json()["code"]) == (455, 455)


def test_455_window_starts_and_ends_exactly(client, clock, ctl):
    """A window {start_in: 10, duration: 5}: 455 from t+10 (included) to t+15 (excluded)."""
    window = ctl.maintenance_window(start_in=10, duration=5)["maintenance_window"]
    assert window == [T0 + 10, T0 + 15]
    seen = {}
    for t in (9, 10, 11, 14, 15, 16):
        clock.advance(T0 + t - clock.now())
        seen[t] = submit(client)[1]["code"]
    assert seen == {9: 200, 10: 455, 11: 455, 14: 455, 15: 200, 16: 200}


def test_455_window_given_in_epoch_seconds(client, clock, ctl):
    ctl.update_settings(maintenance_window=[T0 + 100, T0 + 200])
    seen = {}
    for t in (99, 100, 101, 199, 200, 201):
        clock.advance(T0 + t - clock.now())
        seen[t] = client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"]
    assert seen == {99: 200, 100: 455, 101: 455, 199: 455, 200: 200, 201: 200}
    ctl.update_settings(maintenance_window=None)
    assert ctl.settings()["maintenance_window"] is None


# ==================================================================================================
# Forced codes: Prefer: code=N and armed faults (409, 451, 500, and every other documented code)
# ==================================================================================================
@pytest.mark.parametrize("code", ERROR_CODES)
def test_prefer_code_forces_every_documented_code_and_charges_nothing(client, ctl, code):
    r = client.post(COVER, json=body(), headers={**AUTH, "Prefer": f"code={code}"})
    env = r.get_json()
    assert env["code"] == code and env["data"] is None and env["msg"]
    assert r.status_code == (429 if code == 429 else 200)
    if code == 429:  # a forced 429 looks like the real one
        assert r.headers["Retry-After"] == "1"
    assert credits(client) == 1000 and ctl.tasks() == []


def test_409_from_the_header(client):
    assert_rejected(submit(client, headers={"Prefer": "code=409"}), 409, msg_part="already exists")


def test_409_armed_for_the_next_two_requests_of_one_key(client, ctl):
    ctl.put_account("other-key", credits=100)
    fault = ctl.arm(code=409, count=2, key=KEY)
    assert fault["kind"] == "code" and fault["count"] == 2
    accepted(client, headers=auth("other-key"))  # another key is not touched
    assert_rejected(submit(client), 409)
    assert ctl.faults()[0]["count"] == 1
    assert_rejected(submit(client), 409)
    assert ctl.faults() == []
    accepted(client)


def test_an_armed_code_applies_to_any_endpoint_of_the_key(client, ctl):
    ctl.arm(code=500)  # key "*": every key
    assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"] == 500
    assert credits(client) == 1000


@pytest.mark.parametrize("store", ["memory", "sqlite::memory:"])
def test_a_code_armed_for_one_endpoint_leaves_the_others_alone(make_fake, store):
    """A client that polls in the background must not use up the 409 meant for its next cover;
    a code armed for the endpoint goes before one armed for every endpoint."""
    fake = make_fake(store=store)
    client, ctl = fake.client, fake.ctl
    task_id = accepted(client)
    fault = ctl.arm(code=409, count=2, path=COVER)
    assert (fault["kind"], fault["path"]) == ("code", COVER)
    ctl.arm(code=500)  # every endpoint, armed second
    assert [(f["kind"], f.get("path")) for f in ctl.faults()] == [("code", COVER), ("code", None)]
    assert_rejected(submit(client), 409)
    assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"] == 500  # only the general one
    for _ in range(3):
        assert record_info(client, task_id)["code"] == 200
        assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"] == 200
    assert_rejected(submit(client), 409)
    accepted(client)
    assert ctl.faults() == []
    ctl.arm(code=455, path="/api/v1/generate/record-info")
    accepted(client)
    fake.clock.advance(1)  # record-info's 3 a second per task
    assert record_info(client, task_id)["code"] == 455
    assert record_info(client, task_id)["code"] == 200


@pytest.mark.parametrize("fault, says", [
    ({"code": 409, "path": "/api/v1/generate/upload_cover"}, "path: one of /api/v1/generate/upload-cover"),
    ({"code": 409, "path": "upload-cover"}, "path: one of"),
    ({"code": 409, "path": None}, "path: one of"),
    ({"scenario": "fail-501", "path": COVER}, "path goes with code"),
])
def test_a_fault_path_must_be_an_endpoint_of_the_api(client, fault, says):
    r = client.post("/_mock/faults", json=fault)
    assert (r.status_code, r.get_json()["code"]) == (400, 400) and says in r.get_json()["msg"], r.get_json()


def test_451_from_the_header(client):
    assert_rejected(submit(client, headers={"Prefer": "code=451"}), 451, msg_part="Failed to fetch")


def test_500_from_the_header_and_armed(client, ctl):
    assert_rejected(submit(client, headers={"Prefer": "code=500"}), 500, msg_part="Internal Error")
    ctl.arm(code=500, count=1)
    assert_rejected(submit(client), 500)
    accepted(client)


def test_500_in_status_transport_is_http_500(make_fake):
    fake = make_fake(transport="status")
    r = fake.client.post(COVER, json=body(), headers={**AUTH, "Prefer": "code=500"})
    assert (r.status_code, r.get_json()["code"]) == (500, 500)


@pytest.mark.parametrize("endpoint", ["cover", "record-info", "credit"])
def test_one_http_500_on_the_default_transport_from_the_header_and_armed(client, ctl, endpoint):
    """The notes: besides HTTP 200 + code 500, "a separate HTTP 500 with {code:500, msg,
    data:null} is documented too". A client rehearses both without restarting the fake."""
    def call(prefer=None):
        headers = {**AUTH, **({"Prefer": prefer} if prefer else {})}
        if endpoint == "cover":
            return client.post(COVER, json=body(), headers=headers)
        path = "/api/v1/generate/record-info?taskId=x" if endpoint == "record-info" else "/api/v1/chat/credit"
        return client.get(path, headers=headers)

    for prefer, http in (("code=500, transport=status", 500), ("code=500, transport=real", 200),
                         ("code=500", 200), ("code=429, transport=real", 429), ("code=402, transport=status", 402)):
        r = call(prefer)
        assert (r.status_code, r.get_json()["code"], r.get_json()["data"]) == (http, int(prefer[5:8]), None), prefer
    ctl.arm(code=500, count=2, transport="status", msg="upstream failed")
    for _ in range(2):
        r = call()
        assert (r.status_code, r.get_json()) == (500, {"code": 500, "msg": "upstream failed", "data": None})
    assert call().status_code == 200 and call().get_json()["code"] != 500  # used up
    for bad in ({"code": 500, "transport": "http"}, {"code": 500, "transport": None},
                {"scenario": "fail-501", "transport": "status"}):
        assert client.post("/_mock/faults", json=bad).status_code == 400, bad


def test_a_forced_code_answered_the_real_way_on_a_status_transport_server(make_fake):
    fake = make_fake(transport="status")
    r = fake.client.post(COVER, json=body(), headers={**AUTH, "Prefer": "code=500, transport=real"})
    assert (r.status_code, r.get_json()["code"]) == (200, 500)


# ==================================================================================================
# 451: from a real fetch of uploadUrl (Config(source_check=True))
# ==================================================================================================
class Source:
    """A loopback file server: /song.mp3 is real audio, anything else 404."""

    def __init__(self):
        audio = media.mp3_bytes(30.0)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/song.mp3":
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/mpeg")
                    self.send_header("Content-Length", str(len(audio)))
                    self.end_headers()
                    self.wfile.write(audio)
                else:
                    self.send_error(404)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source():
    s = Source()
    yield s
    s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_451_when_the_upload_url_answers_404_or_refuses(make_fake, source):
    fake = make_fake(source_check=True)
    fake.ctl.update_settings(rate_limit=1)  # a 451 must not take the only slot
    assert_rejected(submit(fake.client, body(uploadUrl=source.base + "/missing.mp3")), 451, msg_part="HTTP 404")
    refused = f"http://127.0.0.1:{closed_port()}/song.mp3"
    assert_rejected(submit(fake.client, body(uploadUrl=refused)), 451, msg_part="Failed to fetch")
    assert credits(fake.client) == 1000
    accepted(fake.client, body(uploadUrl=source.base + "/song.mp3"))  # the same fake accepts real audio
    assert credits(fake.client) == 988


def test_without_source_check_the_upload_url_is_not_fetched(client):
    accepted(client, body(uploadUrl=f"http://127.0.0.1:{closed_port()}/song.mp3"))


# ==================================================================================================
# Late failures: error callbacks and what record-info says
# ==================================================================================================
FAIL_STATUS = {400: "SENSITIVE_WORD_ERROR", 408: "GENERATE_AUDIO_FAILED", 413: "GENERATE_AUDIO_FAILED",
               500: "GENERATE_AUDIO_FAILED", 501: "GENERATE_AUDIO_FAILED", 531: "GENERATE_AUDIO_FAILED"}
FAIL_WORDS = {400: "copyrighted", 408: "timed out", 413: "existing work", 500: "Internal Error",
              501: "Audio generation failed.", 531: "refunded"}


@pytest.mark.parametrize("code", sorted(FAIL_STATUS))
def test_fail_scenario_sends_text_then_an_error_callback_and_record_info_agrees(client, clock, delivery, code):
    task_id = accepted(client, custom_body(), headers={"Prefer": f"scenario=fail-{code}"})
    assert credits(client) == 988
    clock.advance(2)
    assert delivery.stages(task_id) == ["text"]
    assert record_info(client, task_id)["data"]["status"] == "TEXT_SUCCESS"
    clock.advance(3)
    assert delivery.stages(task_id) == ["text", "error"]
    error = delivery.calls[-1]["body"]
    assert list(CALLBACK.iter_errors(error)) == []
    assert error["code"] == code and FAIL_WORDS[code] in error["msg"]
    assert error["data"] == {"callbackType": "error", "task_id": task_id, "data": []}
    info = record_info(client, task_id)
    assert list(RECORD.iter_errors(info)) == []
    data = info["data"]
    assert (data["status"], data["errorCode"], data["errorMessage"]) == (FAIL_STATUS[code], code, error["msg"])
    assert data["response"]["sunoData"] == []
    assert credits(client) == (1000 if code == 531 else 988)  # 531: "failed, credits refunded"
    clock.advance(100)
    assert delivery.stages(task_id) == ["text", "error"]  # nothing after the error
    assert record_info(client, task_id)["data"]["status"] == FAIL_STATUS[code]


def test_fail_create_never_makes_the_task_and_says_create_task_failed(client, clock, delivery):
    task_id = accepted(client, custom_body(), headers={"Prefer": "scenario=fail-create"})
    assert credits(client) == 988
    clock.advance(1.99)
    assert delivery.stages(task_id) == [] and record_info(client, task_id)["data"]["status"] == "PENDING"
    clock.advance(0.01)  # the text stage's time: the error instead
    assert delivery.stages(task_id) == ["error"]
    error = delivery.calls[-1]["body"]
    assert list(CALLBACK.iter_errors(error)) == []
    assert error == {"code": 500, "msg": "Internal Error",
                     "data": {"callbackType": "error", "task_id": task_id, "data": []}}
    info = record_info(client, task_id)
    assert list(RECORD.iter_errors(info)) == []
    assert (info["data"]["status"], info["data"]["errorCode"], info["data"]["errorMessage"]) == \
        ("CREATE_TASK_FAILED", 500, "Internal Error")
    clock.advance(100)
    assert delivery.stages(task_id) == ["error"] and credits(client) == 988  # not refunded: only 531 is
    assert record_info(client, task_id)["data"]["status"] == "CREATE_TASK_FAILED"


def test_fail_create_keeps_its_status_when_its_callback_is_given_up(client, clock, delivery):
    delivery.default = 500
    task_id = accepted(client, headers={"Prefer": "scenario=fail-create"})
    clock.advance(60)
    assert len(delivery.calls) == 4  # 1 try + 3 retries
    assert record_info(client, task_id)["data"]["status"] == "CREATE_TASK_FAILED"


def test_531_refunds_exactly_once(client, clock, ctl):
    ctl.put_account("team-key", credits=12)
    task_id = accepted(client, headers={**auth("team-key"), "Prefer": "scenario=fail-531"})
    assert credits(client, "team-key") == 0
    clock.advance(5)
    ctl.fire(task_id)
    clock.advance(100)
    assert credits(client, "team-key") == 12
    accepted(client, headers=auth("team-key"))  # the refund pays for the retry


def test_a_531_stage_job_run_again_after_its_process_died_does_not_refund_twice(client, clock, ctl, service, monkeypatch):
    """The refund and the task's update are one atomic store step. Here the process "dies" in
    the middle of the failing stage's store write (the write raises, as a kill would stop it):
    the job is run again (its lease ran out) and the credits come back once. (With the refund a
    write of its own before the update, they came back twice.)"""
    from mock_server import lifecycle
    from mock_server.scheduler import FLOW

    store, died = service.store, []

    def dies_once(real):
        def write(task_id, changes, *rest):
            if changes.get("errorCode") == 531 and not died:
                died.append(task_id)
                raise SystemExit("killed")  # nothing of this write happens
            return real(task_id, changes, *rest)
        return write

    monkeypatch.setattr(store, "update_task", dies_once(store.update_task))
    monkeypatch.setattr(store, "refund_task", dies_once(store.refund_task))
    ctl.put_account("team-key", credits=24)
    task_id = accepted(client, headers={**auth("team-key"), "Prefer": "scenario=fail-531"})
    task = store.get_task(task_id)
    failing = next(i for i, step in enumerate(task["plan"]) if step.get("code") == 531)
    for index in range(failing + 1):
        job = {"id": lifecycle.new_id(), "task_id": task_id, "kind": "stage", "due": clock.now(),
               "index": index, "flow": FLOW}
        if index == failing:
            with pytest.raises(SystemExit):
                service.scheduler._stage(store.get_task(task_id), job)
        service.scheduler.process(job)  # (the failing one: run again after the death)
    assert died == [task_id] and credits(client, "team-key") == 24
    assert store.get_task(task_id)["refunded"] is True


def test_fail_scenario_armed_for_the_next_task_of_a_key(client, clock, delivery, ctl):
    ctl.put_account("other-key", credits=100)
    ctl.arm(scenario="fail-501", count=2, key=KEY)
    assert_rejected(submit(client, body(model="V9")), 422)  # a rejected request does not use it up
    other = accepted(client, headers=auth("other-key"))
    first, second, third = (accepted(client) for _ in range(3))
    clock.advance(10)
    assert delivery.stages(first) == delivery.stages(second) == ["text", "error"]
    assert delivery.stages(third) == delivery.stages(other) == ["text", "first", "complete"]


def test_default_scenario_setting_applies_to_every_task(client, clock, delivery, ctl):
    ctl.update_settings(default_scenario="fail-408")
    ids = [accepted(client) for _ in range(3)]
    clock.advance(10)
    assert all(delivery.stages(t) == ["text", "error"] for t in ids)
    assert {record_info(client, t)["data"]["errorCode"] for t in ids} == {408}


def test_header_scenario_wins_over_an_armed_one(client, clock, delivery, ctl):
    ctl.arm(scenario="fail-501")
    task_id = accepted(client, headers={"Prefer": "scenario=complete-only"})
    clock.advance(10)
    assert delivery.stages(task_id) == ["complete"]
    assert len(ctl.faults()) == 1  # still armed for the next task


# ==================================================================================================
# Callback misbehaviour
# ==================================================================================================
def test_complete_only_skips_text_and_first(client, clock, delivery):
    task_id = accepted(client, headers={"Prefer": "scenario=complete-only"})
    clock.advance(7)
    assert delivery.calls == []
    assert record_info(client, task_id)["data"]["status"] == "PENDING"
    clock.advance(1)
    assert delivery.stages(task_id) == ["complete"]
    complete = delivery.calls[0]["body"]
    assert complete["msg"] == "All generated successfully." and len(complete["data"]["data"]) == 2
    data = record_info(client, task_id)["data"]
    assert data["status"] == "SUCCESS"
    assert data["response"]["sunoData"] == [lifecycle.camel(t) for t in complete["data"]["data"]]
    clock.advance(100)
    assert delivery.stages(task_id) == ["complete"]


def test_duplicate_callbacks_deliver_each_stage_twice_with_identical_bodies(client, clock, delivery, ctl):
    task_id = accepted(client, headers={"Prefer": "scenario=duplicate-callbacks"})
    clock.advance(10)
    assert delivery.stages(task_id) == ["text", "text", "first", "first", "complete", "complete"]
    bodies = [c["body"] for c in delivery.calls]
    for a, b in zip(bodies[::2], bodies[1::2]):
        assert a == b
    assert record_info(client, task_id)["data"]["status"] == "SUCCESS"
    journal = ctl.callbacks(task_id=task_id)
    assert [e["duplicate"] for e in reversed(journal)] == [False, True] * 3


def test_delayed_callbacks_record_info_runs_ahead(client, clock, delivery):
    """Polling says SUCCESS while every callback is still on its way (30 s late by default)."""
    task_id = accepted(client, headers={"Prefer": "scenario=delayed-callbacks"})
    clock.advance(8)
    assert record_info(client, task_id)["data"]["status"] == "SUCCESS"
    assert delivery.calls == []
    clock.advance(23)  # t = 31
    assert delivery.calls == []
    clock.advance(1)  # t = 32: text, 30 s after its stage
    assert delivery.stages(task_id) == ["text"]
    clock.advance(3)
    assert delivery.stages(task_id) == ["text", "first"]
    clock.advance(3)
    assert delivery.stages(task_id) == ["text", "first", "complete"]
    # the late payloads are what the stage produced, not the task's final state
    assert [len(c["body"]["data"]["data"]) for c in delivery.calls] == [0, 2, 2]
    assert [bool(t["audio_url"]) for t in delivery.calls[1]["body"]["data"]["data"]] == [True, False]


def test_delayed_callbacks_with_a_delay_from_the_header(client, clock, delivery):
    task_id = accepted(client, headers={"Prefer": "scenario=delayed-callbacks, delay=5"})
    clock.advance(6)
    assert delivery.calls == []
    assert record_info(client, task_id)["data"]["status"] == "FIRST_SUCCESS"
    clock.advance(1)
    assert delivery.stages(task_id) == ["text"]
    clock.advance(6)
    assert delivery.stages(task_id) == ["text", "first", "complete"]


def test_no_callbacks_ever_but_record_info_succeeds(client, clock, delivery, ctl):
    task_id = accepted(client, headers={"Prefer": "scenario=no-callbacks"})
    for status in ("TEXT_SUCCESS", "FIRST_SUCCESS", "SUCCESS"):
        clock.advance(3)
        assert record_info(client, task_id)["data"]["status"] == status
    clock.advance(3600)
    assert delivery.calls == [] and ctl.callbacks(task_id=task_id) == []
    data = record_info(client, task_id)["data"]
    assert data["status"] == "SUCCESS" and len(data["response"]["sunoData"]) == 2


# Scenarios combined with "+": a plan (which stages happen) with what callbacks and files do
def test_a_late_failure_whose_callbacks_come_twice_refunds_once(client, clock, delivery, ctl):
    ctl.put_account("team-key", credits=12)
    task_id = accepted(client, headers={**auth("team-key"), "Prefer": "scenario=fail-531+duplicate-callbacks"})
    assert credits(client, "team-key") == 0
    clock.advance(100)
    assert delivery.stages(task_id) == ["text", "text", "error", "error"]
    bodies = [c["body"] for c in delivery.calls]
    assert bodies[0] == bodies[1] and bodies[2] == bodies[3] and bodies[2]["code"] == 531
    data = record_info(client, task_id, "team-key")["data"]
    assert (data["status"], data["errorCode"]) == ("GENERATE_AUDIO_FAILED", 531)
    assert credits(client, "team-key") == 12  # refunded once, though its callback came twice
    assert [e["duplicate"] for e in reversed(ctl.callbacks(task_id=task_id))] == [False, True] * 2


def test_delayed_and_duplicated_callbacks_each_come_late_and_twice(client, clock, delivery):
    task_id = accepted(client, headers={"Prefer": "scenario=delayed-callbacks+duplicate-callbacks, delay=5"})
    clock.advance(6.99)  # text at t=2, its callback due at 7
    assert delivery.calls == [] and record_info(client, task_id)["data"]["status"] == "FIRST_SUCCESS"
    clock.advance(0.01)
    assert delivery.stages(task_id) == ["text", "text"]
    clock.advance(6)
    assert delivery.stages(task_id) == ["text", "text", "first", "first", "complete", "complete"]


def test_a_plan_combined_with_empty_files_armed_with_its_parameter(client, clock, delivery, ctl):
    ctl.arm(scenario="complete-only+empty-files", params={"seconds": 5})
    task_id = accepted(client)
    clock.advance(8)
    assert delivery.stages(task_id) == ["complete"]
    url = record_info(client, task_id)["data"]["response"]["sunoData"][0]["audioUrl"]
    clock.advance(4.99)  # complete at t=8, empty until 13
    assert len(_get(client, url).data) == 0
    clock.advance(0.01)
    assert len(_get(client, url).data) > 1000


def test_a_default_scenario_may_be_a_combination(client, clock, delivery, ctl):
    assert ctl.update_settings(default_scenario="no-callbacks+fail-400")["default_scenario"] == "fail-400+no-callbacks"
    task_id = accepted(client)
    clock.advance(100)
    assert delivery.calls == [] and record_info(client, task_id)["data"]["status"] == "SENSITIVE_WORD_ERROR"


@pytest.mark.parametrize("given, kept", [
    ("duplicate-callbacks+fail-531", "fail-531+duplicate-callbacks"),  # the plan first, then as listed
    ("empty-urls+empty-files+complete-only", "complete-only+empty-files+empty-urls"),
    ("success+no-callbacks", "no-callbacks"),  # success is what no plan means
    ("success", "success"),
    ("fail-create+delayed-callbacks", "fail-create+delayed-callbacks"),
])
def test_a_combination_is_kept_under_one_name(client, service, given, kept):
    task_id = accepted(client, headers={"Prefer": f"scenario={given}"})
    assert service.store.get_task(task_id)["scenario"]["name"] == kept


COMBINATIONS_REFUSED = [
    ("fail-531+fail-400", "a task follows one plan"),
    ("success+complete-only", "a task follows one plan"),
    ("no-callbacks+duplicate-callbacks", "no callback to duplicate"),
    ("delayed-callbacks+no-callbacks", "no callback to delay"),
    ("fail-400+empty-files", "never reaches SUCCESS"),
    ("fail-create+empty-urls", "never reaches SUCCESS"),
    ("duplicate-callbacks+duplicate-callbacks", "names a part twice"),
    ("fail-531+", "unknown scenario ''"),
    ("fail-531+explode", "unknown scenario 'explode'"),
]


@pytest.mark.parametrize("name, reason", COMBINATIONS_REFUSED)
def test_a_combination_that_cannot_be_played_is_a_422_and_charges_nothing(client, name, reason):
    assert_rejected(submit(client, headers={"Prefer": f"scenario={name}"}), 422, msg_part=reason)
    assert credits(client) == 1000


@pytest.mark.parametrize("name, reason", COMBINATIONS_REFUSED)
def test_a_combination_that_cannot_be_played_is_refused_by_the_control_api(ctl, name, reason):
    for call in (lambda: ctl.arm(scenario=name), lambda: ctl.update_settings(default_scenario=name)):
        with pytest.raises(ControlError) as err:
            call()
        assert err.value.status == 400 and reason in str(err.value)
    assert ctl.faults() == [] and ctl.settings()["default_scenario"] == "success"


@pytest.mark.parametrize("prefer, reason", [
    ("scenario=fail-531+duplicate-callbacks, delay=5", "takes no parameters"),
    ("scenario=delayed-callbacks+empty-files, delay=5, wait=3", None),  # unknown preferences are ignored
    ("scenario=delayed-callbacks+empty-files, delay=5, seconds=3", None),
])
def test_a_combination_takes_the_parameters_of_its_parts(client, service, prefer, reason):
    if reason:
        assert_rejected(submit(client, headers={"Prefer": prefer}), 422, msg_part=reason)
    else:
        task_id = accepted(client, headers={"Prefer": prefer})
        assert service.store.get_task(task_id)["scenario"]["name"] == "delayed-callbacks+empty-files"


def _get(client, url: str):
    return client.get(urlsplit(url).path)


def test_empty_files_serve_zero_bytes_right_after_success(client, clock, delivery):
    task_id = accepted(client, headers={"Prefer": "scenario=empty-files"})
    clock.advance(8)
    data = record_info(client, task_id)["data"]
    assert data["status"] == "SUCCESS"
    track = data["response"]["sunoData"][0]
    for url in (track["audioUrl"], track["imageUrl"], track["streamAudioUrl"]):
        r = _get(client, url)
        assert (r.status_code, len(r.data)) == (200, 0)
    clock.advance(29)
    assert len(_get(client, track["audioUrl"]).data) == 0
    clock.advance(1)  # 30 s after SUCCESS: the real files
    audio = _get(client, track["audioUrl"])
    assert audio.status_code == 200 and len(audio.data) > 1000 and audio.mimetype == "audio/mpeg"
    assert len(_get(client, track["imageUrl"]).data) > 100


def test_empty_files_for_a_chosen_time_armed(client, clock, ctl):
    ctl.arm(scenario="empty-files", params={"seconds": 5})
    task_id = accepted(client)
    clock.advance(8)
    url = record_info(client, task_id)["data"]["response"]["sunoData"][1]["audioUrl"]
    clock.advance(4)
    assert len(_get(client, url).data) == 0
    clock.advance(1)
    assert len(_get(client, url).data) > 1000


@pytest.mark.parametrize("prefer, seconds", [("scenario=empty-urls", 30), ("scenario=empty-urls, seconds=5", 5)])
def test_empty_urls_in_record_info_right_after_success(client, clock, delivery, prefer, seconds):
    """The notes: "output URLs that are empty ... right after SUCCESS". Polling says SUCCESS with
    audioUrl "" for a while; the complete callback carries the URLs all along."""
    task_id = accepted(client, headers={"Prefer": prefer})
    clock.advance(5)
    first = record_info(client, task_id)["data"]
    assert first["status"] == "FIRST_SUCCESS" and first["response"]["sunoData"][0]["audioUrl"]  # not before SUCCESS
    clock.advance(3)
    info = record_info(client, task_id)
    assert list(RECORD.iter_errors(info)) == [] and info["data"]["status"] == "SUCCESS"
    tracks = info["data"]["response"]["sunoData"]
    assert [(t["audioUrl"], t["sourceAudioUrl"]) for t in tracks] == [("", "")] * 2
    assert all(t["streamAudioUrl"] and t["imageUrl"] for t in tracks)
    assert all(t["audio_url"] for t in delivery.calls[-1]["body"]["data"]["data"])  # the callback has them
    clock.advance(seconds - 0.001)
    assert record_info(client, task_id)["data"]["response"]["sunoData"][0]["audioUrl"] == ""
    clock.advance(0.001)
    urls = [t["audioUrl"] for t in record_info(client, task_id)["data"]["response"]["sunoData"]]
    assert all(u.endswith(".mp3") for u in urls) and len(_get(client, urls[0]).data) > 1000


def test_files_of_a_normal_task_are_there_right_after_success(client, clock):
    task_id = accepted(client)
    clock.advance(8)
    url = record_info(client, task_id)["data"]["response"]["sunoData"][0]["audioUrl"]
    assert len(_get(client, url).data) > 1000


# -- callbacks the receiver refuses ---------------------------------------------------------------
def test_callback_given_up_after_one_try_and_three_retries_with_backoff_1_2_4(client, clock, delivery, ctl):
    delivery.answers = [500, 500, 500, 500]
    task_id = accepted(client)
    attempts_at = {}
    for t in range(2, 12):
        clock.advance(T0 + t - clock.now())
        attempts_at[t] = len(delivery.calls)
    # tries at t = 2, then 2+1 = 3, 3+2 = 5, 5+4 = 9; nothing in between, nothing after
    assert attempts_at == {2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 3, 9: 4, 10: 4, 11: 4}
    journal = list(reversed(ctl.callbacks(task_id=task_id)))
    assert [(e["stage"], e["attempt"], e["at"] - T0, e["status"], e["ok"]) for e in journal] == [
        ("text", 0, 2, 500, False), ("text", 1, 3, 500, False), ("text", 2, 5, 500, False),
        ("text", 3, 9, 500, False)]
    assert delivery.stages(task_id) == ["text"] * 4
    info = record_info(client, task_id)["data"]
    assert info["status"] == "CALLBACK_EXCEPTION"
    assert ctl.task(task_id)["delivery"] == "abandoned"
    clock.advance(3600)
    assert len(delivery.calls) == 4  # "the system will stop sending callbacks"
    assert record_info(client, task_id)["data"]["status"] == "CALLBACK_EXCEPTION"


def test_callback_that_recovers_on_a_retry_keeps_the_task_going(client, clock, delivery):
    delivery.answers = [503, "connection refused", 200]
    task_id = accepted(client)
    clock.advance(5)  # tries at 2, 3 and 5
    assert delivery.stages(task_id) == ["text", "text", "text", "first"]
    clock.advance(3)
    assert delivery.stages(task_id)[-1] == "complete"
    assert record_info(client, task_id)["data"]["status"] == "SUCCESS"


def test_fire_makes_pending_retries_due_now(client, clock, delivery, ctl):
    delivery.answers = [500]
    task_id = accepted(client)
    clock.advance(2)
    assert len(delivery.calls) == 1
    ctl.fire(task_id)
    assert delivery.stages(task_id) == ["text", "text", "first", "complete"]
    assert clock.now() == T0 + 2  # fired without moving the clock


# ==================================================================================================
# Latency (fixed, random within bounds, per request)
# ==================================================================================================
@pytest.fixture
def sleeps(monkeypatch) -> list:
    """The API's waits, recorded instead of slept (the only use of `time` in api.py)."""
    recorded: list = []
    monkeypatch.setattr(api, "time", SimpleNamespace(sleep=recorded.append))
    return recorded


def test_fixed_latency_from_settings(client, ctl, sleeps):
    ctl.latency(0.25)
    accepted(client)
    credits(client)
    assert sleeps == [0.25, 0.25]
    ctl.latency(None)
    accepted(client)
    assert sleeps == [0.25, 0.25]


def test_random_latency_stays_within_its_bounds(client, ctl, sleeps):
    ctl.latency(0.1, 0.3)
    for _ in range(60):
        credits(client)
    assert len(sleeps) == 60
    assert all(0.1 <= s <= 0.3 for s in sleeps)
    assert len(set(sleeps)) > 10  # not a fixed value


def test_prefer_latency_overrides_the_setting_for_one_request(client, ctl, sleeps):
    ctl.latency(0.1)
    accepted(client, headers={"Prefer": "latency=0.5"})
    accepted(client, headers={"Prefer": "latency=0"})
    accepted(client)
    assert sleeps == [0.5, 0.1]


# ==================================================================================================
# A real `kie-mock serve` process: the rate limit under concurrency
# ==================================================================================================
def start_serve(*args: str) -> subprocess.Popen:
    """`kie-mock serve ARGS` (as `python -m mock_server`, the same entry point) in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "mock_server", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def serve(*args: str, timeout: float = 30.0):
    """A fresh fake on a free port, in-memory state; yields its base URL once it listens."""
    proc = start_serve("--port", "0", "--store", "memory", *args)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF: the process ended

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"kie-mock serve did not start in {timeout} s: {''.join(seen)}") from None
            if line is None:
                raise AssertionError(f"kie-mock serve exited {proc.wait()}: {''.join(seen)}")
            seen.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                break
        base = match.group(1)
        wait_until_answering(base, deadline)
        yield base
    finally:
        stop(proc)


def wait_until_answering(base: str, deadline: float) -> None:
    """The banner may come as soon as the socket is bound: wait for the app itself to answer."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=2))
    while True:
        try:
            if http.request("GET", base + "/_mock/health").status in (200, 401):
                return
        except urllib3.exceptions.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"kie-mock serve at {base} does not answer")
        time.sleep(0.05)


def test_rate_limit_is_exact_under_40_concurrent_submissions_on_a_real_server():
    with serve("--clock", "virtual") as base:
        http = urllib3.PoolManager(maxsize=40, retries=False, timeout=urllib3.Timeout(total=30))
        payload = json.dumps(body()).encode()
        start = threading.Barrier(40)
        results: list = []
        lock = threading.Lock()

        def one():
            start.wait()
            r = http.request("POST", base + COVER, body=payload,
                             headers={**AUTH, "Content-Type": "application/json"})
            with lock:
                results.append((r.status, json.loads(r.data)["code"], r.headers.get("Retry-After")))

        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(r[:2] for r in results) == [(200, 200)] * 20 + [(429, 429)] * 20
        assert {r[2] for r in results if r[0] == 429} == {"10"}
        ctl = ControlClient(base)
        assert len(ctl.tasks()) == 20
        balance = http.request("GET", base + "/api/v1/chat/credit", headers=AUTH)
        assert json.loads(balance.data)["data"] == 1000 - 20 * 12

        # credits hold under the same race: 10 covers' worth, 40 at once, no rate limit
        ctl.update_settings(rate_limit=0)
        ctl.set_credits(KEY, 120)
        results.clear()
        start.reset()
        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(r[1] for r in results) == [200] * 10 + [402] * 30
        balance = http.request("GET", base + "/api/v1/chat/credit", headers=AUTH)
        assert json.loads(balance.data)["data"] == 0

        # a Prefer latency really waits on a real server (a lower bound only)
        began = time.monotonic()
        r = http.request("GET", base + "/api/v1/chat/credit", headers={**AUTH, "Prefer": "latency=0.3"})
        assert json.loads(r.data)["code"] == 200 and time.monotonic() - began >= 0.3


def test_a_forced_code_can_carry_its_own_message(client):
    """Real clients see 500s used for validation messages: an armed fault can say anything."""
    r = client.post("/_mock/faults", json={"code": 500, "msg": "uploadUrl is not a valid audio file", "count": 1})
    assert r.status_code == 200
    _, env = submit(client)
    assert env == {"code": 500, "msg": "uploadUrl is not a valid audio file", "data": None}
    assert submit(client)[1]["code"] == 200  # used up
    for bad in ({"code": 500, "msg": ""}, {"code": 500, "msg": 5}, {"scenario": "fail-501", "msg": "x"}):
        assert client.post("/_mock/faults", json=bad).status_code == 400
