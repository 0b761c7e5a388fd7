"""Issue 3: staged callbacks on a timer, delivery with retries, polling in step, real files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import miniaudio
import pytest
from PIL import Image

from conftest import AUTH, RecordingDelivery, body, custom_body, submit
from mock_server import lifecycle
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config
from mock_server.spec import validator

CALLBACK = validator("callback.json")
RECORD = validator("record-info-response.json")


class Receiver:
    """A real HTTP callback receiver on loopback. `on_post(body)` may return a status."""

    def __init__(self, on_post=None):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.on_post = on_post
        self.event = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = outer.on_post(data) if outer.on_post else 200
                with outer.event:
                    outer.bodies.append(data)
                    outer.headers.append(dict(self.headers))
                    outer.event.notify_all()
                self.send_response(status or 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        with self.event:
            assert self.event.wait_for(lambda: len(self.bodies) >= n, timeout), \
                f"expected {n} callbacks, got {len(self.bodies)}: {[b['data']['callbackType'] for b in self.bodies]}"
        return self.bodies

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _stage_of(status: str) -> str:
    return {"TEXT_SUCCESS": "text", "FIRST_SUCCESS": "first", "SUCCESS": "complete"}[status]


def test_real_receiver_gets_text_first_complete_in_order_and_record_info_agrees_at_each_step():
    """The whole flow on a real clock, real HTTP delivery and a real receiver on loopback."""
    cfg = Config(stage_delays=(0.05, 0.15, 0.3))
    app = create_app(cfg)
    client = app.test_client()
    seen = []

    def on_post(payload):  # poll while the callback is in flight: the two views must agree
        task_id = payload["data"]["task_id"]
        info = app.test_client().get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()
        seen.append(info)
        return 200

    recv = Receiver(on_post)
    try:
        _, env = submit(client, custom_body(callBackUrl=recv.url))
        task_id = env["data"]["taskId"]
        bodies = recv.wait_for(3)
        time.sleep(0.3)  # nothing more may come
        assert [b["data"]["callbackType"] for b in recv.bodies] == ["text", "first", "complete"]
        for payload, info in zip(bodies, seen):
            assert list(CALLBACK.iter_errors(payload)) == []
            assert list(RECORD.iter_errors(info)) == []
            assert payload["data"]["task_id"] == task_id
            data = info["data"]
            assert _stage_of(data["status"]) == payload["data"]["callbackType"]
            assert data["operationType"] == "upload_cover"
            assert json.loads(data["param"])["title"] == "Peaceful Piano"
            assert data["response"]["sunoData"] == [lifecycle.camel(t) for t in payload["data"]["data"]]
        text, first, complete = bodies
        assert text == {"code": 200, "msg": "Text generation completed.",
                        "data": {"callbackType": "text", "task_id": task_id, "data": []}}
        assert first["msg"] == "First track generated successfully."
        assert [bool(t["audio_url"]) for t in first["data"]["data"]] == [True, False]
        assert complete["msg"] == "All generated successfully."
        assert len(complete["data"]["data"]) == 2 and all(t["audio_url"] for t in complete["data"]["data"])
        assert recv.headers[0]["Content-Type"] == "application/json"
    finally:
        recv.close()
        app.extensions["kie_mock"].scheduler.stop()


def test_stages_fire_at_their_delays_on_the_virtual_clock(client, clock, delivery):
    _, env = submit(client)
    task_id = env["data"]["taskId"]

    def status():
        return client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()["data"]["status"]

    assert status() == "PENDING"
    for step, stages, expected in [(1.99, [], "PENDING"), (0.01, ["text"], "TEXT_SUCCESS"),
                                   (2.99, ["text"], "TEXT_SUCCESS"), (0.01, ["text", "first"], "FIRST_SUCCESS"),
                                   (3.0, ["text", "first", "complete"], "SUCCESS")]:
        clock.advance(step)
        assert delivery.stages(task_id) == stages
        assert status() == expected


def test_time_scale_and_instant_mode_shorten_every_delay(clock, delivery):
    for cfg, wait in [(Config(clock="virtual", time_scale=0.01), 0.08), (Config(clock="virtual", instant=True), 0)]:
        app = create_app(cfg, clock=clock, deliver=delivery)
        _, env = submit(app.test_client())
        clock.advance(wait)
        assert delivery.stages(env["data"]["taskId"]) == ["text", "first", "complete"]


def test_failed_deliveries_are_retried_with_backoff_then_stop_with_callback_exception(client, clock, delivery, service):
    delivery.answers = [500, "connection refused", "timeout after 15s", 404]  # 1 try + 3 retries, all fail
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    clock.advance(2)  # text is due: first attempt fails
    for backoff, attempts in [(1, 2), (2, 3), (4, 4)]:
        clock.advance(backoff - 0.01)
        assert len(delivery.calls) == attempts - 1
        clock.advance(0.01)
        assert len(delivery.calls) == attempts
    clock.advance(60)
    assert len(delivery.calls) == 4, "delivery stops after 3 failed retries"
    journal = service.store.read_log("attempts", task_id=task_id)[::-1]
    assert [(e["stage"], e["attempt"], e["status"], e["error"]) for e in journal] == [
        ("text", 0, 500, None), ("text", 1, None, "connection refused"),
        ("text", 2, None, "timeout after 15s"), ("text", 3, 404, None)]
    assert all(e["url"] == "https://api.example.com/callback" and e["duration"] >= 0 for e in journal)
    info = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()["data"]
    assert info["status"] == "CALLBACK_EXCEPTION"
    assert len(info["response"]["sunoData"]) == 2, "generation itself still completed"


@pytest.mark.parametrize("scenario, status", [("fail-501", "GENERATE_AUDIO_FAILED"), ("fail-400", "SENSITIVE_WORD_ERROR"),
                                              ("success", "CALLBACK_EXCEPTION")])
@pytest.mark.parametrize("failing", ["text", "error-or-last"])
def test_a_failed_generation_keeps_its_status_when_its_callbacks_are_given_up(client, clock, delivery, scenario,
                                                                               status, failing):
    """API_NOTES: CALLBACK_EXCEPTION means "generation worked but the callback could not be
    delivered". A failed generation whose callbacks are given up (its text callback, before
    the failure; or the failure's own callback) still says how it failed."""
    _, env = submit(client, headers={"Prefer": f"scenario={scenario}"})
    task_id = env["data"]["taskId"]
    if failing == "text":
        delivery.default = 500
    else:
        clock.advance(2)  # text delivered
        delivery.default = 500
    clock.advance(120)
    assert len([s for s in delivery.stages(task_id)]) == (4 if failing == "text" else 5)
    assert _status(client, task_id) == status


def test_a_failure_applied_while_delivery_was_being_given_up_keeps_its_status(client, clock, delivery, service):
    """The give-up read the task before the failing stage was applied: its write comes after, and
    the failure still stands (one atomic read-modify-write each; the give-up checks after)."""
    delivery.default = 500
    _, env = submit(client, headers={"Prefer": "scenario=fail-501"})
    task_id = env["data"]["taskId"]
    clock.advance(2.5)  # text applied, its first attempt failed
    stale = service.store.get_task(task_id)
    assert stale["status"] == "TEXT_SUCCESS" and stale["delivery"] == "active"
    clock.advance(3)  # the failure lands (stages keep their times)
    assert _status(client, task_id) == "GENERATE_AUDIO_FAILED"
    service.scheduler._delivery(stale, "text", 3, 0)  # the last attempt, with what it read before
    assert _status(client, task_id) == "GENERATE_AUDIO_FAILED"
    assert service.store.get_task(task_id)["delivery"] == "abandoned"


def test_a_retry_that_succeeds_is_followed_by_the_next_callback_at_once(client, clock, delivery):
    delivery.answers = [503, 503]
    _, env = submit(client)
    clock.advance(2 + 1 + 1.99)  # text fails twice; the third attempt comes 1 s + 2 s later
    assert delivery.stages() == ["text", "text"]
    clock.advance(0.01)  # t=5: the third attempt succeeds; `first` (planned at t=5) follows
    assert delivery.stages() == ["text"] * 3 + ["first"]
    clock.advance(3)
    assert delivery.stages() == ["text"] * 3 + ["first", "complete"]


def _status(client, task_id):
    return client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()["data"]["status"]


def test_a_failing_receiver_holds_up_the_callbacks_not_the_stages(client, clock, delivery):
    """Generation keeps its own time (stages at 2, 5, 8 s): while text is retried (1, 2, 4 s),
    polling runs ahead of the callbacks, which still come in order, as soon as one gets through."""
    delivery.answers = [500, 500, 500]  # text at 2, 3, 5 fails; its last retry at 9 succeeds
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    for t, status, stages in [(2.5, "TEXT_SUCCESS", ["text"]), (5.5, "FIRST_SUCCESS", ["text"] * 3),
                              (8.5, "SUCCESS", ["text"] * 3)]:
        clock.advance(t - (clock.now() - 1_750_000_000.0))
        assert (_status(client, task_id), delivery.stages(task_id)) == (status, stages), t
    clock.advance(0.5)  # t=9: text gets through, and first and complete (both happened) follow it at once
    assert delivery.stages(task_id) == ["text"] * 4 + ["first", "complete"]
    assert _status(client, task_id) == "SUCCESS"
    clock.advance(60)
    assert len(delivery.calls) == 6


def test_a_receiver_that_never_answers_2xx_gets_no_later_callbacks_and_polling_ends_in_callback_exception(
        client, clock, delivery):
    delivery.default = 500
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    clock.advance(8.5)  # every stage has happened; text is still being retried
    assert _status(client, task_id) == "SUCCESS" and delivery.stages(task_id) == ["text"] * 3
    clock.advance(0.5)  # t=9: the third retry fails: given up
    assert _status(client, task_id) == "CALLBACK_EXCEPTION"
    clock.advance(60)
    assert delivery.stages(task_id) == ["text"] * 4


def test_callbacks_in_order_and_each_once_when_stages_and_slow_answers_overlap():
    """Real clock, a pool of delivery threads, a receiver that answers late or fails at random:
    a stage and the previous callback's delivery finish at the same moment again and again, and
    exactly one of them makes the stage's callback."""
    import random

    rng = random.Random(7)
    lock = threading.Lock()
    tried: dict = {}

    def on_post(payload):
        time.sleep(rng.uniform(0, 0.03))
        with lock:
            key = (payload["data"]["task_id"], payload["data"]["callbackType"])
            tried[key] = tried.get(key, 0) + 1
            return 500 if tried[key] == 1 and rng.random() < 0.3 else 200

    recv = Receiver(on_post)
    cfg = Config(stage_delays=(0.02, 0.04, 0.06), retry_delays=(0.01, 0.01, 0.01), rate_limit=0,
                 api_keys={"kie-mock-key": 10**6})
    app = create_app(cfg)
    client = app.test_client()
    try:
        ids = [submit(client, body(callBackUrl=recv.url))[1]["data"]["taskId"] for _ in range(40)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with recv.event:
                got = [b for b in recv.bodies]
            if all(sum(1 for b in got if b["data"]["task_id"] == t and b["data"]["callbackType"] == "complete") for t in ids):
                break
            time.sleep(0.05)
        time.sleep(0.3)  # nothing more may come
        with recv.event:
            bodies = list(recv.bodies)
        for t in ids:
            stages = [b["data"]["callbackType"] for b in bodies if b["data"]["task_id"] == t]
            delivered = [s for i, s in enumerate(stages) if s not in stages[i + 1:]]  # a failed try is tried again
            assert delivered == ["text", "first", "complete"], (t, stages)
            assert all(stages.count(s) == tried[(t, s)] for s in set(stages)), (t, stages)
            assert all(tried[(t, s)] <= 2 for s in set(stages)), (t, stages)  # each delivered once, after one failure at most
            assert _status(client, t) == "SUCCESS"
    finally:
        recv.close()
        app.extensions["kie_mock"].scheduler.stop()


@pytest.mark.parametrize("answer", [199, 300, 302, 400, 500])
def test_any_non_2xx_answer_is_a_failed_attempt(client, clock, delivery, answer, service):
    delivery.answers = [answer]
    _, env = submit(client)
    clock.advance(2)
    assert service.store.read_log("attempts")[0]["ok"] is False
    clock.advance(1)
    assert delivery.stages() == ["text", "text"]


@pytest.mark.parametrize("length", [2047, 2048, 2049, 100_000])
def test_an_attempt_keeps_at_most_2048_characters_of_its_url(client, clock, delivery, service, length):
    """A 900 KB callBackUrl is legal; every attempt kept it whole, and /_mock/callbacks answered 100 MB."""
    prefix = "https://api.example.com/callback/"
    url = prefix + "a" * (length - len(prefix))
    submit(client, body(callBackUrl=url))
    clock.advance(2)
    assert delivery.calls[0]["url"] == url  # called back at the URL as given
    shown = service.store.read_log("attempts")[0]["url"]
    if length <= 2048:
        assert shown == url
    else:
        assert shown == url[:2048] + f"…({len(url)} characters)"


def test_real_http_failures_are_journaled_refused_timeout_and_status():
    slow = threading.Event()

    def on_post(payload):
        if len(recv.bodies) == 0:
            return 500
        slow.wait(1.0)  # longer than the timeout below
        return 200

    recv = Receiver(on_post)
    clock = VirtualClock(1_750_000_000.0)
    cfg = Config(clock="virtual", callback_timeout=0.3)
    app = create_app(cfg, clock=clock)
    svc = app.extensions["kie_mock"]
    try:
        _, env = submit(app.test_client(), body(callBackUrl=recv.url))
        clock.advance(2)  # 500
        clock.advance(1)  # times out
        slow.set()
        closed = body(callBackUrl="http://127.0.0.1:9/refused")  # the discard port: nothing listens
        _, env2 = submit(app.test_client(), closed)
        clock.advance(2)
        entries = svc.store.read_log("attempts")[::-1]
        assert (entries[0]["status"], entries[0]["error"]) == (500, None)
        assert entries[1]["status"] is None and entries[1]["error"].startswith("timeout")
        assert entries[1]["duration"] < 0.9
        refused = [e for e in entries if e["task_id"] == env2["data"]["taskId"]]
        assert refused[0]["status"] is None and "refused" in refused[0]["error"]
    finally:
        recv.close()
        svc.scheduler.stop()


def test_signed_callbacks_carry_a_verifiable_hmac(client, clock, delivery):
    client.put("/_mock/accounts/kie-mock-key", json={"webhookHmacKey": "s3cret"})
    _, env = submit(client)
    clock.advance(2)
    call = delivery.calls[0]
    ts = call["headers"]["X-Webhook-Timestamp"]
    assert ts == str(int(clock.now()))
    task_id = call["body"]["data"]["task_id"]
    expected = base64.b64encode(hmac.new(b"s3cret", f"{task_id}.{ts}".encode(), hashlib.sha256).digest()).decode()
    assert call["headers"]["X-Webhook-Signature"] == expected


def test_unsigned_by_default(client, clock, delivery):
    submit(client)
    clock.advance(2)
    assert "X-Webhook-Signature" not in delivery.calls[0]["headers"]


def _complete_tracks(client, clock, delivery):
    _, env = submit(client)
    clock.advance(10)
    complete = delivery.calls[-1]["body"]
    assert complete["data"]["callbackType"] == "complete"
    return env["data"]["taskId"], complete["data"]["data"]


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_audio_url_downloads_an_mp3_a_decoder_opens_with_the_announced_duration(client, clock, delivery):
    _, tracks = _complete_tracks(client, clock, delivery)
    for track in tracks:
        for field in ("audio_url", "source_audio_url", "stream_audio_url", "source_stream_audio_url"):
            r = client.get(_path(track[field]))
            assert r.status_code == 200 and r.mimetype == "audio/mpeg"
            decoded = miniaudio.decode(r.data)
            seconds = decoded.num_frames / decoded.sample_rate
            assert abs(seconds - track["duration"]) < 0.03, (field, seconds, track["duration"])


def test_cover_image_is_a_real_jpeg(client, clock, delivery):
    _, tracks = _complete_tracks(client, clock, delivery)
    for field in ("image_url", "source_image_url"):
        r = client.get(_path(tracks[0][field]))
        assert r.mimetype == "image/jpeg"
        assert Image.open(io.BytesIO(r.data)).size == (128, 128)


def test_audio_streams_with_range_requests(client, clock, delivery):
    _, tracks = _complete_tracks(client, clock, delivery)
    path = _path(tracks[0]["stream_audio_url"])
    whole = client.get(path).data
    size = len(whole)
    r = client.get(path, headers={"Range": "bytes=0-99"})
    assert (r.status_code, r.headers["Content-Range"], r.data) == (206, f"bytes 0-99/{size}", whole[:100])
    r = client.get(path, headers={"Range": f"bytes={size - 10}-"})
    assert (r.status_code, r.data) == (206, whole[-10:])
    r = client.get(path, headers={"Range": "bytes=-5"})
    assert r.data == whole[-5:]
    r = client.get(path, headers={"Range": f"bytes={size}-"})
    assert (r.status_code, r.headers["Content-Range"]) == (416, f"bytes */{size}")
    r = client.get(path, headers={"Range": "lines=1-2"})
    assert (r.status_code, len(r.data)) == (200, size)
    assert client.get(path).headers["Accept-Ranges"] == "bytes"


def test_range_boundaries_and_validators(client, clock, delivery):
    """RFC 9110: a suffix longer than the file is the whole file (14.1.3); a range from the last
    byte, one past it; If-Range with the file's ETag resumes, with another tag (or a date: the
    files have no Last-Modified) the whole file comes (13.1.5); If-None-Match answers 304."""
    _, tracks = _complete_tracks(client, clock, delivery)
    path = _path(tracks[0]["stream_audio_url"])
    first = client.get(path)
    whole, etag = first.data, first.headers["ETag"]
    size = len(whole)
    for suffix in (size - 1, size, size + 1, 10 * size):
        r = client.get(path, headers={"Range": f"bytes=-{suffix}"})
        start = max(size - suffix, 0)
        assert (r.status_code, r.headers["Content-Range"], r.data) == (206, f"bytes {start}-{size - 1}/{size}", whole[start:])
    assert client.get(path, headers={"Range": f"bytes={size - 1}-"}).data == whole[-1:]
    assert client.get(path, headers={"Range": f"bytes={size - 1}-{size + 5}"}).data == whole[-1:]
    assert client.get(path, headers={"Range": f"bytes={size}-{size + 5}"}).status_code == 416
    assert client.get(path, headers={"Range": "bytes=0-0"}).data == whole[:1]
    r = client.get(path, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert (r.status_code, r.data) == (206, whole[10:20])
    for other in ('"something-else"', "Wed, 21 Oct 2015 07:28:00 GMT", "W/" + etag):
        r = client.get(path, headers={"Range": "bytes=10-19", "If-Range": other})
        assert (r.status_code, r.data) == (200, whole), other
    for tag in (etag, "*", f'"x", {etag}', "W/" + etag):
        r = client.get(path, headers={"If-None-Match": tag})
        assert (r.status_code, r.data, r.headers["ETag"]) == (304, b"", etag), tag
    assert client.get(path, headers={"If-None-Match": '"x"'}).status_code == 200
    assert client.get(path).headers["ETag"] == etag  # stable
    others = {client.get(_path(t[f])).headers["ETag"] for t in tracks for f in ("audio_url", "stream_audio_url", "image_url")}
    assert len(others) == 3 * len(tracks)  # one per file


def test_files_and_records_expire_after_15_days(client, clock, delivery):
    task_id, tracks = _complete_tracks(client, clock, delivery)
    created = client.get(f"/_mock/tasks/{task_id}").get_json()["data"]["created_at"]
    url = _path(tracks[0]["audio_url"])
    clock.advance(created + 15 * 86400 - clock.now() - 1)  # one second before
    assert client.get(url).status_code == 200
    assert client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()["code"] == 200
    clock.advance(1)  # at 15 days
    assert client.get(url).status_code == 404
    gone = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()
    assert gone == {"code": 422, "msg": "recordInfo is null", "data": None}


def test_retention_is_configurable(clock, delivery):
    app = create_app(Config(clock="virtual", retention_days=1), clock=clock, deliver=delivery)
    client = app.test_client()
    task_id, tracks = _complete_tracks(client, clock, delivery)
    clock.advance(86400)
    assert client.get(_path(tracks[0]["audio_url"])).status_code == 404


@pytest.mark.parametrize("name", ["nope.mp3", "00000000-0000-0000-0000-000000000000.mp3", "../../etc/passwd"])
def test_unknown_files_are_404_envelopes(client, clock, delivery, name):
    task_id, _ = _complete_tracks(client, clock, delivery)
    r = client.get(f"/files/{task_id}/{name}")
    assert r.status_code == 404 and r.get_json()["code"] == 404


def test_create_time_can_be_epoch_milliseconds(clock, delivery):
    app = create_app(Config(clock="virtual", create_time="epoch_ms"), clock=clock, deliver=delivery)
    _, tracks = _complete_tracks(app.test_client(), clock, delivery)
    assert tracks[0]["createTime"] == int(clock.now() * 1000) - 10_000
    assert list(CALLBACK.iter_errors(delivery.calls[-1]["body"])) == []


def test_thousands_of_pending_tasks_use_no_thread_per_task():
    cfg = Config(stage_delays=(3600, 3601, 3602), rate_limit=0, api_keys={"k": 10**9})
    app = create_app(cfg, deliver=RecordingDelivery())
    client = app.test_client()
    before = threading.active_count()
    for _ in range(2000):
        r = client.post("/api/v1/generate/upload-cover", json=body(), headers={"Authorization": "Bearer k"})
        assert r.get_json()["code"] == 200
    assert threading.active_count() - before <= 1
    assert len(app.extensions["kie_mock"].store.list_jobs()) == 2000
    app.extensions["kie_mock"].scheduler.stop()


def test_create_time_is_the_utc_second_of_each_moment_also_going_back_in_time():
    """createTime's text is cached per whole second: each moment still gets its own second's text
    (a virtual clock may be set back, and threads format different moments)."""
    from mock_server.lifecycle import _create_time

    for t in (1764096000.0, 1764096000.999, 1764096001.0, 1764095999.5, 0.25, -0.5, 1764096001.2):
        assert _create_time(t, Config()) == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    assert _create_time(-0.5, Config()) == "1969-12-31 23:59:59"
    assert _create_time(1764096001.2, Config(create_time="epoch_ms")) == 1764096001200


@pytest.mark.parametrize("stage, spoil, says", [
    ("complete", lambda b: [t.update(duration=float("inf")) for t in b["data"]["data"]], "is not JSON"),
    ("first", lambda b: b["data"].pop("task_id"), "breaks schemas/callback.json"),
])
def test_a_callback_the_fake_must_not_send_is_a_failed_attempt_and_the_task_goes_on(
        client, clock, delivery, service, monkeypatch, stage, spoil, says):
    """A body that is not JSON (json.dumps writes Infinity and NaN) or that the contract forbids
    is the fake's bug: never sent, journaled, and counted as a failed attempt, so the task ends
    (CALLBACK_EXCEPTION after the retries) instead of waiting for good at that stage."""
    real = lifecycle.callback_body

    def spoiled(task, at):
        out = real(task, at)
        if at == stage:
            spoil(out)
        return out
    monkeypatch.setattr(lifecycle, "callback_body", spoiled)
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    clock.advance(60)
    assert delivery.stages(task_id) == {"complete": ["text", "first"], "first": ["text"]}[stage]
    journal = [e for e in service.store.read_log("attempts", task_id=task_id) if e["stage"] == stage]
    assert len(journal) == 4 and all(e["error"].startswith("internal: ") and says in e["error"] for e in journal)
    info = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()["data"]
    assert info["status"] == "CALLBACK_EXCEPTION"
    assert len(info["response"]["sunoData"]) == 2, "generation itself still completed"


@pytest.mark.parametrize("host, base", [
    ("[1.2.3]", None), ("[::1]:8080", "http://[::1]:8080/"), ("[zz]", None), ("fake.local:9000", "http://fake.local:9000/"),
    ("kie_mock:9706", "http://kie_mock:9706/"),  # a compose service name: RFC 3986 allows "_"
    ("a b", None), ("x/y", None), ("u@h", None), ("", None)])
def test_file_urls_use_the_host_header_only_when_it_is_a_valid_host(client, clock, delivery, service, host, base):
    """A bracketed Host that is no IPv6 address made file URLs the callback contract refuses
    (and left the task waiting at its first stage): the configured address is used instead."""
    base = base or f"http://{service.cfg.host}:{service.cfg.port}/"
    _, env = submit(client, headers={"Host": host})
    task_id = env["data"]["taskId"]
    clock.advance(60)
    assert delivery.stages(task_id) == ["text", "first", "complete"]
    audio = delivery.calls[-1]["body"]["data"]["data"][0]["audio_url"]
    assert audio.startswith(base + "files/"), audio


@pytest.mark.parametrize("headers, base", [
    ({"Host": "kie2:9706", "X-Forwarded-Host": "mock.example", "X-Forwarded-Proto": "https"}, "https://mock.example/"),
    # several values: the last is the one the proxy nearest to the fake set (the others came from
    # further away, the client included)
    ({"Host": "kie2", "X-Forwarded-Host": "client.example, mock.example:8443"}, "http://mock.example:8443/"),
    ({"Host": "mock.example", "X-Forwarded-Proto": "http, HTTPS"}, "https://mock.example/"),
    ({"Host": "mock.example", "X-Forwarded-Proto": "gopher"}, "http://mock.example/"),  # not a scheme for files
    ({"Host": "mock.example", "X-Forwarded-Host": "a b"}, None),  # not a host: the configured address
    ({"Host": "mock.example", "X-Forwarded-Host": ""}, "http://mock.example/"),
])
def test_file_urls_follow_what_a_proxy_says_the_client_reached(client, clock, delivery, service, headers, base):
    """Behind nginx the Host is the upstream's name (`kie2`): file URLs made of it are of no use to
    the client. A proxy's X-Forwarded-Host and -Proto say what the client reached."""
    base = base or f"http://{service.cfg.host}:{service.cfg.port}/"
    _, env = submit(client, headers=headers)
    task_id = env["data"]["taskId"]
    clock.advance(60)
    audio = delivery.calls[-1]["body"]["data"]["data"][0]["audio_url"]
    assert audio.startswith(base + "files/"), audio
    info = client.get(f"/api/v1/generate/record-info?taskId={task_id}", headers=AUTH).get_json()
    assert info["data"]["response"]["sunoData"][0]["audioUrl"].startswith(base + "files/")


def test_jobs_stored_by_an_older_kie_mock_still_run_their_way(client, clock, delivery, service):
    """A store written before stages kept their own time holds stage jobs without "flow" (whose
    next stage waits for the callback) and retries with "chain": after an upgrade they run to the
    end as they were planned, callbacks included."""
    from mock_server.scenarios import Scenario

    now = clock.now()
    task = lifecycle.new_task(body(), "kie-mock-key", now, service.cfg, "http://127.0.0.1:8787/", Scenario(), 12)
    service.store.put_task(task)
    service.store.add_job({"id": lifecycle.new_id(), "task_id": task["taskId"], "kind": "stage",
                           "due": task["plan"][0]["at"], "index": 0})
    delivery.answers = [500]  # text fails once: its retry (chain) plans `first`, 1 s late
    clock.advance(2)
    assert delivery.stages(task["taskId"]) == ["text"]
    clock.advance(1)
    assert delivery.stages(task["taskId"]) == ["text", "text"]
    clock.advance(2)  # first was planned at 5, after the retry at 3
    assert delivery.stages(task["taskId"]) == ["text", "text", "first"]
    clock.advance(3)
    assert delivery.stages(task["taskId"]) == ["text", "text", "first", "complete"]
    assert _status(client, task["taskId"]) == "SUCCESS"


def test_a_job_makes_one_callback_so_slow_receivers_never_outlive_its_lease():
    """When polling ran ahead (stages 0.05 s apart, a receiver taking 0.4 s), the callbacks that
    follow a late one are jobs of their own: one job sending the whole chain outlived its lease
    (sized for one callback and its duplicate), was claimed again, and stages and callbacks
    happened twice, out of order."""
    recv = Receiver(lambda payload: time.sleep(0.4) or 200)
    cfg = Config(stage_delays=(0.0, 0.05, 0.1), callback_timeout=1.0, rate_limit=0, api_keys={"kie-mock-key": 10**6})
    app = create_app(cfg)
    svc = app.extensions["kie_mock"]
    svc.scheduler.lease = 1.0  # one callback and its duplicate take 0.8 s
    client = app.test_client()
    try:
        _, env = submit(client, body(callBackUrl=recv.url), headers={"Prefer": "scenario=duplicate-callbacks"})
        task_id = env["data"]["taskId"]
        recv.wait_for(6)
        time.sleep(1.5)  # a job claimed again would send more by now
        assert [b["data"]["callbackType"] for b in recv.bodies] == ["text", "text", "first", "first",
                                                                    "complete", "complete"]
        assert _status(client, task_id) == "SUCCESS"
    finally:
        recv.close()
        svc.scheduler.stop()


def test_a_clean_stop_finishes_the_callbacks_in_progress_instead_of_leaving_them_claimed(tmp_path):
    """Stopped (SIGTERM) while a receiver takes its time, the scheduler waits for the attempt:
    its job is finished, the next stage planned, and nothing waits out a lease to be sent again."""
    started = threading.Event()

    def slow(url, data, headers):
        started.set()
        time.sleep(0.5)
        return lifecycle_attempt(200)

    svc, env = _sqlite_fake_submitting(tmp_path, slow)
    assert started.wait(10)
    svc.scheduler.stop()
    jobs = svc.store.list_jobs(env["data"]["taskId"])
    assert [(j["kind"], j["index"], j.get("owner")) for j in jobs] == [("stage", 1, None)], jobs
    svc.store.close()


def test_a_stopping_scheduler_waits_for_a_callback_no_longer_than_its_bound(tmp_path, monkeypatch):
    """The wait is bounded by STOP_WAIT (the supervisor's patience): a receiver slower than that
    leaves its job claimed, taken over once the lease runs out (made at least once)."""
    from mock_server import scheduler as sched

    monkeypatch.setattr(sched, "STOP_WAIT", 0.3)
    started, release = threading.Event(), threading.Event()

    def stuck(url, data, headers):
        started.set()
        release.wait(10)
        return lifecycle_attempt(200)

    svc, env = _sqlite_fake_submitting(tmp_path, stuck)
    try:
        assert started.wait(10)
        t0 = time.monotonic()
        svc.scheduler.stop()
        waited = time.monotonic() - t0
        assert 0.3 <= waited < 3, waited  # the bound, not the receiver (10 s)
        jobs = svc.store.list_jobs(env["data"]["taskId"])
        assert [(j["kind"], j["index"], j.get("owner") is not None) for j in jobs] == [("stage", 0, True), ("stage", 1, False)], jobs
    finally:
        release.set()
        deadline = time.monotonic() + 10
        while svc.scheduler._busy and time.monotonic() < deadline:  # its thread is done with the store
            time.sleep(0.01)
        svc.store.close()


def _sqlite_fake_submitting(tmp_path, deliver):
    """A fake on a SQLite file whose text stage is due at once, one cover submitted: (service, envelope)."""
    cfg = Config(stage_delays=(0.0, 60, 120), store=f"sqlite:{tmp_path / 's.sqlite'}", rate_limit=0)
    app = create_app(cfg, deliver=deliver)
    _, env = submit(app.test_client())
    return app.extensions["kie_mock"], env


def lifecycle_attempt(status):
    from mock_server.delivery import Attempt

    return Attempt(status, None, 0.5)


def test_a_store_that_fails_during_a_job_leaves_it_for_its_next_claim(client, clock, delivery, service, monkeypatch):
    """The job used to be deleted after the failure, and with it the task's later stages and
    callbacks: the task stayed at FIRST_SUCCESS with no job left. Now it stays claimed, is taken
    again when its lease runs out, and the task goes on to the end."""
    import sqlite3

    store = service.store
    real, failed = store.update_task, []

    def locked_once(task_id, changes):
        if changes.get("stage_index") == 2 and not failed:  # the complete stage's write
            failed.append(task_id)
            raise sqlite3.OperationalError("database is locked")
        return real(task_id, changes)
    monkeypatch.setattr(store, "update_task", locked_once)
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    clock.advance(8.5)
    assert failed == [task_id] and delivery.stages(task_id) == ["text", "first"]
    (kept,) = store.list_jobs(task_id)
    assert (kept["kind"], kept["index"], kept["owner"]) == ("stage", 2, service.scheduler.owner)
    clock.advance(service.scheduler.lease)  # the lease runs out: claimed and run again
    assert delivery.stages(task_id) == ["text", "first", "complete"]
    assert _status(client, task_id) == "SUCCESS" and store.list_jobs(task_id) == []


def _text_delivered_and_first_applied(client, store) -> tuple[str, dict]:
    """A task whose text and first stages happened, its text callback recorded as delivered, and
    no job left: (its id, the task)."""
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    for job in store.list_jobs(task_id):
        store.finish_job(job["id"])
    task = store.get_task(task_id)
    changes = lifecycle.apply_stage(task, "text")
    changes.update(lifecycle.apply_stage({**task, **changes}, "first"))
    return task_id, store.update_task(task_id, {**changes, "stage_index": 1, "delivered_through": 0})


def test_a_death_between_a_delivered_callback_and_planning_the_next_loses_nothing(client, clock, delivery, service):
    """A stage job made its callback while the next stage happened, recorded it delivered, and
    its process died before planning the next callback. Run again, it plans it."""
    from mock_server.scheduler import FLOW

    store = service.store
    task_id, task = _text_delivered_and_first_applied(client, store)
    service.scheduler._next_stage(task, 1, flow=FLOW)  # the first stage's job planned the complete one
    store.add_job({"id": lifecycle.new_id(), "task_id": task_id, "kind": "stage", "due": clock.now(), "index": 0,
                   "flow": FLOW})
    (job,) = store.claim_due(clock.now(), service.scheduler.owner, 60)  # the text job, run again
    service.scheduler.process(job)
    clock.advance(60)
    assert delivery.stages(task_id) == ["first", "complete"]  # (text: delivered before the death)


def test_a_stage_job_run_again_leaves_the_next_callback_to_the_next_stages_job(client, clock, delivery, service):
    """The text job, kept after a store blip, ran again while the first stage's job (which came
    second, and so makes the first callback itself) was still sending it: it planned the first
    callback too, and first and complete came twice."""
    from mock_server.scheduler import FLOW

    store = service.store
    task_id, _ = _text_delivered_and_first_applied(client, store)
    for index in (1, 0):  # the first stage's job, in flight elsewhere; the text job, to run again
        store.add_job({"id": lifecycle.new_id(), "task_id": task_id, "kind": "stage", "due": clock.now(),
                       "index": index, "flow": FLOW})
    jobs = store.claim_due(clock.now(), service.scheduler.owner, 60)
    service.scheduler.process(next(j for j in jobs if j["index"] == 0))
    assert [(j["kind"], j["index"]) for j in store.list_jobs(task_id)] == [("stage", 1)]
    assert delivery.calls == []


def test_a_scheduler_that_lost_its_job_to_another_does_not_go_on_from_it(client, clock, delivery, service):
    """Paused past its lease while its callback was on the way, a scheduler found its job taken
    by another, which made the callback again and went on: going on here too made every later
    callback twice, out of order. Only the taken-over callback comes twice now."""
    store, scheduler = service.store, service.scheduler
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    taken = []

    def slow_receiver(url, data, headers):  # meanwhile the lease ran out, and another scheduler took the job
        if not taken:
            taken.extend(store.claim_due(clock.now() + scheduler.lease + 1, "other-scheduler", 60))
        return RecordingDelivery.__call__(delivery, url, data, headers)
    scheduler.deliver = slow_receiver
    clock.advance(2.5)  # text
    assert delivery.stages(task_id) == ["text"]
    assert store.get_task(task_id).get("delivered_through", -1) == -1  # not recorded by the one that lost it
    (text_job,) = [j for j in taken if j.get("index") == 0]  # (the first stage's job was taken too)
    other = type(scheduler)(store, clock, service.cfg, deliver=slow_receiver, owner="other-scheduler")
    other.process(text_job)  # the new owner: the callback again, and the rest from there
    clock.advance(100)  # (the first stage's job, left by "other", is claimed when its lease runs out)
    assert delivery.stages(task_id) == ["text", "text", "first", "complete"]


def test_a_stage_job_run_again_after_its_process_died_neither_rewinds_nor_plans_twice(client, clock, delivery, service):
    """A job whose process died is claimed again once its lease runs out. A stage that happened
    already is not applied again (record-info went from SUCCESS back to FIRST_SUCCESS, and the
    stages after it were planned, and called back, twice); what its first run may not have
    done yet is done: the next stage planned, its callback made."""
    from mock_server.scheduler import FLOW

    _, env = submit(client)
    task_id = env["data"]["taskId"]
    clock.advance(8.5)  # every stage happened, every callback delivered
    assert delivery.stages(task_id) == ["text", "first", "complete"]
    def run_again(index):  # a stage job, claimed by this scheduler again after a death
        job = {"id": lifecycle.new_id(), "task_id": task_id, "kind": "stage", "due": clock.now(), "index": index,
               "flow": FLOW}
        service.store.add_job(job)
        (claimed,) = service.store.claim_due(clock.now(), service.scheduler.owner, 60)
        service.scheduler.process(claimed)

    for index in (1, 0):  # the jobs of earlier stages, run again
        run_again(index)
    assert _status(client, task_id) == "SUCCESS" and service.store.list_jobs(task_id) == []
    clock.advance(60)
    assert delivery.stages(task_id) == ["text", "first", "complete"]

    # a run that died right after applying text (nothing planned, no callback made)
    _, env = submit(client)
    task_id = env["data"]["taskId"]
    for job in service.store.list_jobs(task_id):
        service.store.finish_job(job["id"])
    service.store.update_task(task_id, {**lifecycle.apply_stage(service.store.get_task(task_id), "text"),
                                        "stage_index": 0})
    run_again(0)
    assert [(j["kind"], j["index"]) for j in service.store.list_jobs(task_id)] == [("stage", 1)]
    clock.advance(60)
    assert delivery.stages(task_id) == ["text", "first", "complete"]
