"""How to: submit a cover and receive its callbacks, with the kie-mock pytest plugin.

The plugin (installed with kie-mock, entry point `pytest11`) gives every test:
- `kie`: the target (a fake served for the session, fresh state per test), with helpers;
- `kie_callbacks`: a local receiver for callbacks, with wait helpers.

Run these against the real service instead with
    pytest tests/examples --kie-base-url https://api.kie.ai --kie-api-key $KIE_API_KEY \\
           --kie-callback-url https://<your-tunnel> --kie-callback-port 8788
(the tests that need the fake's control API are skipped there, never passed).
"""


def cover(callback_url: str) -> dict:
    return {
        "uploadUrl": "https://storage.example.com/upload",
        "customMode": False,
        "instrumental": False,
        "model": "V3_5",
        "prompt": "A short relaxing piano tune",
        "callBackUrl": callback_url,
    }


def test_a_cover_calls_back_text_first_complete(kie, kie_callbacks):
    ex = kie.upload_cover(cover(kie_callbacks.url("my-task")))
    assert ex.reply.code == 200, ex.reply.describe()
    task_id = ex.reply.data["taskId"]

    calls = kie_callbacks.wait_for_stage("my-task", "complete", timeout=30)

    assert [c.stage for c in calls] == ["text", "first", "complete"]
    assert all(c.task_id == task_id for c in calls)
    tracks = calls[-1].json["data"]["data"]
    assert len(tracks) == 2 and all(t["audio_url"] for t in tracks)


def test_polling_agrees_with_the_callbacks(kie, kie_callbacks):
    task_id = kie.upload_cover(cover(kie_callbacks.url("polled"))).reply.data["taskId"]
    done = kie_callbacks.wait_for_stage("polled", "complete", timeout=30)[-1]

    info = kie.record_info(task_id).reply.data

    assert info["status"] == "SUCCESS"
    assert {t["id"] for t in info["response"]["sunoData"]} == {t["id"] for t in done.json["data"]["data"]}


def test_a_rejected_body_says_why(kie):
    body = cover("https://example.com/cb")
    del body["callBackUrl"]

    reply = kie.upload_cover(body).reply

    # Errors ride in HTTP 200 with the code in the body (a fake started with --transport status
    # mirrors the code as the HTTP status instead): always check the envelope's code.
    assert reply.code == 422 and reply.status in (200, 422)
    if kie.is_fake:  # the real service's words, as it was seen to answer (it may reword them: match loosely there)
        assert reply.json()["msg"] == "Please enter callBackUrl"
