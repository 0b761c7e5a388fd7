"""How to: rehearse what goes wrong, with the fake's control API (`kie_control`).

`kie_control` is a small client for /_mock (contract.control_client.ControlClient). Tests that
use it are skipped (never passed) when the plugin points at the real service.
"""

import pytest

from test_howto_callbacks import cover


def test_insufficient_credits(kie, kie_control):
    kie_control.put_account(kie.api_key, credits=0)

    reply = kie.upload_cover(cover("http://127.0.0.1:9/cb")).reply

    assert reply.code == 402


def test_the_next_request_answers_a_forced_code(kie, kie_control):
    kie_control.arm_code(500, key=kie.api_key)

    assert kie.credit() is None  # that request got the 500 ...
    assert isinstance(kie.credit(), int)  # ... and the next one is served again


def test_a_task_that_fails_late(kie, kie_control, kie_callbacks):
    kie_control.arm_scenario("fail-501", key=kie.api_key)
    task_id = kie.upload_cover(cover(kie_callbacks.url("doomed"))).reply.data["taskId"]

    calls = kie_callbacks.wait_for_stage("doomed", "error", timeout=30)

    assert [c.stage for c in calls] == ["text", "error"]
    assert calls[-1].json["code"] == 501
    assert kie.record_info(task_id).reply.data["status"] == "GENERATE_AUDIO_FAILED"


def test_callbacks_are_retried_when_the_receiver_fails(kie, kie_control, kie_callbacks):
    kie_callbacks.fail_next("flaky", 500)  # the receiver answers 500 once, then 200
    task_id = kie.upload_cover(cover(kie_callbacks.url("flaky"))).reply.data["taskId"]

    kie_callbacks.wait_for_stage("flaky", "complete", timeout=30)

    attempts = kie_control.callbacks(task_id=task_id, stage="text")
    assert [a["status"] for a in reversed(attempts)] == [500, 200]


@pytest.mark.kie_fake_only
def test_maintenance(kie, kie_control):
    with kie_control.settings_changed(maintenance=True):
        assert kie.upload_cover(cover("http://127.0.0.1:9/cb")).reply.code == 455
    assert isinstance(kie.credit(), int)
