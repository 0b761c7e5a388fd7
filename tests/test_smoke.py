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
