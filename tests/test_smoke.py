from conftest import AUTH, body, submit


def test_accepted_cover_has_a_task_that_record_info_knows(client):
    status, env = submit(client)
    assert (status, env["code"], env["msg"]) == (200, 200, "success")
    task_id = env["data"]["taskId"]
    r = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH)
    data = r.get_json()["data"]
    assert data["status"] == "PENDING" and data["taskId"] == task_id
    assert '"model":"V3_5"' in data["param"]


def test_staged_callbacks_fire_in_order_when_the_clock_moves(client, clock, delivery):
    _, env = submit(client, body())
    task_id = env["data"]["taskId"]
    clock.advance(2)
    assert delivery.stages(task_id) == ["text"]
    clock.advance(10)
    assert delivery.stages(task_id) == ["text", "first", "complete"]


def test_the_flask_views_answer_exactly_like_the_fast_path(config, clock, delivery):
    """create_app(fast_path=False) serves the API through Flask: same handlers, same answers."""
    from mock_server.app import create_app

    slow = create_app(config, clock=clock, deliver=delivery, fast_path=False).test_client()
    for payload in (body(), body(prompt="x" * 401), [1], body(callBackUrl=...)):
        _, env = submit(slow, payload)
        assert env["code"] in (200, 422)
    status, env = submit(slow, body())
    assert status == 200 and env["code"] == 200
    r = slow.get(f"/api/v1/generate/record-info?taskId={env['data']['taskId']}", headers=AUTH)
    assert r.get_json()["data"]["status"] == "PENDING"
    assert slow.get("/api/v1/chat/credit", headers={"Authorization": "Bearer nope"}).get_json()["code"] == 401
    assert submit(slow, body(prompt="x" * 401))[1]["msg"] == "prompt: at most 400 characters in non-custom mode (got 401)"
