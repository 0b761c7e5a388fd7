"""The callback receiver and the control client, on their own."""

import json
import threading

import pytest
import urllib3

from contract.control_client import ControlClient, ControlError
from contract.receiver import CallbackReceiver
from contract.servers import make_fake, stop_app
from mock_server.clock import VirtualClock
from mock_server.config import Config

HTTP = urllib3.PoolManager(retries=False)


def post(url, body, headers=None):
    return HTTP.request("POST", url, body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json", **(headers or {})})


def test_receiver_records_answers_and_waits():
    with CallbackReceiver() as rx:
        rx.fail_next("t1", 500)
        assert post(rx.url("t1"), {"data": {"callbackType": "text", "task_id": "a"}}).status == 500
        threading.Timer(0.1, post, (rx.url("t1"), {"data": {"callbackType": "complete", "task_id": "a"}},
                                    {"X-Webhook-Signature": "s"})).start()
        calls = rx.wait_for_stage("t1", "complete", timeout=5)
        assert [(c.stage, c.status) for c in calls] == [("text", 500), ("complete", 200)]
        assert rx.stages("t1") == ["complete"] and rx.for_task("a")[-1].headers["X-Webhook-Signature"] == "s"
        assert rx.wait_for_stage("nobody", timeout=0.1) == []
        rx.check()


def test_receiver_public_url_is_what_it_hands_out():
    with CallbackReceiver(public_url="https://tunnel.example/") as rx:
        assert rx.url("x") == "https://tunnel.example/cb/x" and rx.local_url.startswith("http://127.0.0.1:")


@pytest.fixture
def ctl():
    app = make_fake(Config(clock="virtual", api_keys={"k1": 100}), clock=VirtualClock(start=1_750_000_000.0))
    yield ControlClient.for_app(app), app
    stop_app(app)


def test_control_client_covers_the_control_api(ctl):
    c, app = ctl
    assert c.available() and c.health()["clock"] == "virtual"
    assert c.put_account("k2", credits=50)["credits"] == 50
    assert {a["credits"] for a in c.accounts()} == {100, 50}
    with c.settings_changed(maintenance=True, cover_cost=5):
        assert c.settings()["maintenance"] is True
    assert c.settings()["maintenance"] is False and c.settings()["cover_cost"] == 12
    assert c.arm_code(402, key="k1", count=2)["count"] == 2
    assert c.arm_scenario("fail-501")["scenario"] == "fail-501"
    assert len(c.faults()) == 2
    c.clear_faults()
    assert c.faults() == [] and "fail-501" in c.scenarios()["scenarios"]
    now = c.clock()["now"]
    assert c.advance(10) == now + 10

    client = app.test_client()
    r = client.post("/api/v1/generate/upload-cover", headers={"Authorization": "Bearer k1"}, json={
        "uploadUrl": "https://a.example/x.mp3", "customMode": False, "instrumental": False, "model": "V4",
        "prompt": "hi", "callBackUrl": "http://127.0.0.1:9/cb"})
    task_id = r.get_json()["data"]["taskId"]
    assert [t["taskId"] for t in c.tasks(key="k1")] == [task_id]
    assert c.task(task_id)["status"] == "PENDING"
    assert c.fire(task_id) >= 1
    assert c.requests(path="/api/v1/generate/upload-cover")[0]["task_id"] == task_id
    assert c.callbacks(task_id=task_id)  # the refused delivery was journaled
    c.delete_account("k2")
    c.reset()
    assert c.tasks() == []


def test_control_client_raises_with_the_fakes_sentence(ctl):
    c, _ = ctl
    with pytest.raises(ControlError) as exc:
        c.arm_code(999)
    assert exc.value.status == 400 and "code" in exc.value.msg
    assert not ControlClient.for_url("http://127.0.0.1:1").available()
