"""Issue 3 (6): the optional uploadUrl check, against files served on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import RecordingDelivery, body, submit
from mock_server import media
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config

FILES = {
    "/479.mp3": media.mp3_bytes(479),
    "/480.mp3": media.mp3_bytes(480),
    "/481.mp3": media.mp3_bytes(481),
    "/short.mp3": media.mp3_bytes(3),
    "/notes.txt": b"just some text, not audio",
    "/big.mp3": media.mp3_bytes(3000),
}


@pytest.fixture(scope="module")
def origin():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            data = FILES.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            try:
                self.wfile.write(data or b"")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the fake stops reading at its size cap

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def checked():
    app = create_app(Config(clock="virtual", source_check=True, source_timeout=2, source_max_bytes=5_000_000),
                     clock=VirtualClock(1_750_000_000.0), deliver=RecordingDelivery())
    yield app.test_client()
    app.extensions["kie_mock"].scheduler.stop()


@pytest.mark.parametrize("path,code,words", [
    ("/479.mp3", 200, None),
    ("/480.mp3", 200, None),  # exactly 8 minutes is allowed
    ("/481.mp3", 422, "at most 8:00"),
    ("/short.mp3", 200, None),
    ("/notes.txt", 422, "not audio"),
    ("/big.mp3", 422, "larger than 5000000 bytes"),
    ("/missing.mp3", 451, "HTTP 404"),
])
def test_upload_url_is_fetched_and_judged(checked, origin, path, code, words):
    _, env = submit(checked, body(uploadUrl=origin + path))
    assert env["code"] == code, env
    if words:
        assert words in env["msg"] and "uploadUrl" in env["msg"] or code == 451


def test_unreachable_upload_url_is_451(checked):
    _, env = submit(checked, body(uploadUrl="http://127.0.0.1:9/nothing-listens.mp3"))
    assert env["code"] == 451 and env["msg"].startswith("Failed to fetch")


def test_a_rejected_source_costs_nothing(checked, origin):
    before = checked.get("/api/v1/chat/credit", headers={"Authorization": "Bearer kie-mock-key"}).get_json()["data"]
    submit(checked, body(uploadUrl=origin + "/notes.txt"))
    after = checked.get("/api/v1/chat/credit", headers={"Authorization": "Bearer kie-mock-key"}).get_json()["data"]
    assert before == after == 1000


def test_source_check_is_off_by_default_so_no_network_is_needed(client):
    _, env = submit(client, body(uploadUrl="http://127.0.0.1:9/nothing-listens.mp3"))
    assert env["code"] == 200


def test_the_limit_is_configurable(origin):
    app = create_app(Config(clock="virtual", source_check=True, max_audio_seconds=2), clock=VirtualClock(0.0),
                     deliver=RecordingDelivery())
    _, env = submit(app.test_client(), body(uploadUrl=origin + "/short.mp3"))
    assert env["code"] == 422 and "at most 0:02" in env["msg"]
    app.extensions["kie_mock"].scheduler.stop()
