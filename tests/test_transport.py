"""The error transport (real: HTTP 200 + code in the body, 429 as HTTP 429; status: HTTP status =
code), and a handful of wire-level cases against a real `kie-mock serve` process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest

from conftest import AUTH, KEY, RecordingDelivery, body, submit
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config

URL = "/api/v1/generate/upload-cover"
START = 1_750_000_000.0


def make_app(**cfg):
    cfg.setdefault("clock", "virtual")
    clock = VirtualClock(start=START)
    app = create_app(Config(**cfg), clock=clock, deliver=RecordingDelivery())
    return app, clock


@pytest.fixture(params=["real", "status"])
def transport(request):
    """(transport name, test client, clock) for a fake with 20 credits (one cover, then 402)."""
    app, clock = make_app(transport=request.param, api_keys={KEY: 20, "poor-key": 5})
    yield request.param, app.test_client(), clock
    app.extensions["kie_mock"].scheduler.stop()


def _post(c, payload=None, headers=None, **kw):
    return c.post(URL, json=body() if payload is None else payload, headers={**AUTH, **(headers or {})}, **kw)


# (case, request maker, expected code). Every outcome a client must tell apart.
OUTCOMES = [
    ("accepted", lambda c: _post(c), 200),
    ("no-key", lambda c: c.post(URL, json=body()), 401),
    ("unknown-key", lambda c: _post(c, headers={"Authorization": "Bearer nope"}), 401),
    ("invalid-body", lambda c: _post(c, body(model="V9")), 422),
    ("broken-json", lambda c: c.post(URL, data=b"{", headers={**AUTH, "Content-Type": "application/json"}), 422),
    ("wrong-content-type", lambda c: c.post(URL, data=b"{}", headers={**AUTH, "Content-Type": "text/plain"}), 422),
    ("insufficient-credits", lambda c: _post(c, headers={"Authorization": "Bearer poor-key"}), 402),
    ("record-info-unknown", lambda c: c.get("/api/v1/generate/record-info?taskId=nope", headers=AUTH), 422),
    ("record-info-no-id", lambda c: c.get("/api/v1/generate/record-info", headers=AUTH), 422),
    ("credit", lambda c: c.get("/api/v1/chat/credit", headers=AUTH), 200),
    ("forced-455-maintenance", lambda c: _post(c, headers={"Prefer": "code=455"}), 455),
    ("forced-451", lambda c: _post(c, headers={"Prefer": "code=451"}), 451),
    ("forced-500", lambda c: _post(c, headers={"Prefer": "code=500"}), 500),
    ("bad-prefer", lambda c: _post(c, headers={"Prefer": "code=999"}), 422),
]


@pytest.mark.parametrize("case, make, code", [pytest.param(*o, id=o[0]) for o in OUTCOMES])
def test_each_outcome_in_each_transport(transport, case, make, code):
    name, client, _ = transport
    r = make(client)
    env = r.get_json()
    assert env["code"] == code and set(env) == {"code", "msg", "data"}
    expected_status = code if name == "status" else 200
    assert r.status_code == expected_status, (name, case, env)


@pytest.mark.parametrize("name", ["real", "status"])
def test_rate_limit_is_http_429_in_both_transports(name):
    app, clock = make_app(transport=name, api_keys={KEY: 10**6})
    client = app.test_client()
    for _ in range(20):
        assert submit(client)[1]["code"] == 200
    r = _post(client)
    assert (r.status_code, r.get_json()["code"]) == (429, 429)
    assert int(r.headers["Retry-After"]) >= 1
    assert "20 new tasks per 10 s" in r.get_json()["msg"]
    clock.advance(10)
    assert submit(client)[1]["code"] == 200


def test_rejected_requests_do_not_use_up_the_rate_limit():
    app, _ = make_app(api_keys={KEY: 10**6})
    client = app.test_client()
    for _ in range(30):
        assert submit(client, body(model="V9"))[1]["code"] == 422
    for _ in range(20):
        assert submit(client)[1]["code"] == 200
    assert submit(client)[1]["code"] == 429


def test_a_forced_429_looks_like_a_real_one():
    app, _ = make_app()
    r = _post(app.test_client(), headers={"Prefer": "code=429"})
    assert (r.status_code, r.get_json()["code"]) == (429, 429) and "Retry-After" in r.headers


@pytest.mark.parametrize("name", ["real", "status"])
def test_routing_errors_keep_their_http_status_in_both_transports(name):
    app, _ = make_app(transport=name)
    c = app.test_client()
    r = c.get("/nope")
    assert (r.status_code, r.get_json()["code"]) == (404, 404)
    r = c.get(URL, headers=AUTH)
    assert (r.status_code, r.get_json()["code"], r.headers["Allow"]) == (405, 404, "POST")


def test_default_config_is_the_real_transport():
    assert Config().transport == "real"


# -- against a real server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The HTTP front ends `serve` can run on: the built-in server (the default for every store) and
# granian's two interfaces (RSGI; WSGI, which granian uses for Redis).
FRONT_ENDS = ["builtin", "granian-rsgi", "granian-wsgi"]


@contextlib.contextmanager
def serving(*args: str, front_end: str = "builtin"):
    """`kie-mock serve ARGS` on a free loopback port, on one of FRONT_ENDS; its port."""
    port = _free_port()
    exe = shutil.which("kie-mock")
    cmd = [exe] if exe else [sys.executable, "-m", "mock_server"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    server, _, interface = front_end.partition("-")
    env["KIE_MOCK_HTTP_SERVER"] = server
    if interface:
        env["KIE_MOCK_HTTP_INTERFACE"] = interface
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"kie-mock serve did not start: {proc.stdout.read().decode(errors='replace')}")
            time.sleep(0.1)
    try:
        yield port
    finally:
        # SIGTERM to the server (what a supervisor sends); if it is still there, the whole group it started.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("kie-mock serve did not stop within 10 s of SIGTERM")
        finally:
            proc.stdout.close()


@pytest.fixture(scope="module", params=FRONT_ENDS)
def server(request):
    """`kie-mock serve` on each HTTP front end the fake can use.
    The clock is virtual so no callback ever fires (nothing leaves the machine); no rate limit,
    so the cases do not depend on their order."""
    with serving("--clock", "virtual", "--rate-limit", "0", front_end=request.param) as port:
        yield port


def raw(port: int, data: bytes, method: str = "POST", timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes; read one response by its own framing (not by waiting for the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except BrokenPipeError:  # a server that answered (too large) and closed before reading it all
            pass
        resp = http.client.HTTPResponse(s, method=method)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def request_bytes(method: str, path: str, payload: bytes = b"", headers: dict | None = None,
                  version: str = "HTTP/1.1") -> bytes:
    h = {"Host": "127.0.0.1", "Connection": "close", "Authorization": f"Bearer {KEY}",
         "Content-Type": "application/json", "Content-Length": str(len(payload)), **(headers or {})}
    lines = [f"{method} {path} {version}".encode()] + [
        k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()) for k, v in h.items() if v is not None]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def envelope_of(status: int, headers: dict, data: bytes) -> dict:
    assert status != 500 and headers.get("content-type", "").startswith("application/json"), (status, data[:200])
    env = json.loads(data)
    assert set(env) == {"code", "msg", "data"} and env["code"] != 500, env
    return env


LOOPBACK_BODY = body(callBackUrl="http://127.0.0.1:9/callback", uploadUrl="http://127.0.0.1:9/song.mp3")


def test_real_server_accepts_polls_and_charges(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    conn.request("POST", URL, body=orjson.dumps(LOOPBACK_BODY),
                 headers={**AUTH, "Content-Type": "application/json"})
    r = conn.getresponse()
    env = envelope_of(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    assert (r.status, env["code"], env["msg"]) == (200, 200, "success")
    conn.request("GET", f"/api/v1/generate/record-info?taskId={env['data']['taskId']}", headers=AUTH)
    r = conn.getresponse()
    info = json.loads(r.read())
    assert info["data"]["status"] == "PENDING" and json.loads(info["data"]["param"])["model"] == "V3_5"
    conn.request("GET", "/api/v1/chat/credit", headers=AUTH)
    assert json.loads(conn.getresponse().read())["data"] <= 1000 - 12
    conn.close()


WIRE_CASES = [
    ("nan", request_bytes("POST", URL, b'{"styleWeight": NaN}'), 422, "not valid JSON"),
    ("infinity", request_bytes("POST", URL, b'{"styleWeight": -Infinity}'), 422, "not valid JSON"),
    ("deep-100k", request_bytes("POST", URL, b"[" * 100_000 + b"]" * 100_000), 422, "not valid JSON"),
    ("invalid-utf8", request_bytes("POST", URL, b'{"prompt": "\xff\xfe"}'), 422, "not valid JSON"),
    ("bom", request_bytes("POST", URL, b"\xef\xbb\xbf" + orjson.dumps(LOOPBACK_BODY)), 422, "not valid JSON"),
    ("array", request_bytes("POST", URL, b"[1, 2]"), 422, "must be a JSON object"),
    ("no-content-type", request_bytes("POST", URL, orjson.dumps(LOOPBACK_BODY), {"Content-Type": None}), 422,
     "Content-Type must be application/json"),
    ("form", request_bytes("POST", URL, b"model=V4", {"Content-Type": "application/x-www-form-urlencoded"}), 422,
     "Content-Type must be application/json"),
    ("empty", request_bytes("POST", URL, b""), 422, "empty"),
    ("too-large", request_bytes("POST", URL, b'{"prompt": "' + b"x" * (1 << 20) + b'"}'), 422, "too large"),
    ("declared-too-large", request_bytes("POST", URL, b"{", {"Content-Length": "5000000"}), 422, "too large"),
    ("chunked", request_bytes("POST", URL, b"%x\r\n%s\r\n0\r\n\r\n" % (len(orjson.dumps(LOOPBACK_BODY)),
                                                                     orjson.dumps(LOOPBACK_BODY)),
                              {"Content-Length": None, "Transfer-Encoding": "chunked"}), 200, "success"),
    ("http-1.0", request_bytes("POST", URL, orjson.dumps(LOOPBACK_BODY), version="HTTP/1.0"), 200, "success"),
    ("invalid-utf8-in-auth", request_bytes("GET", "/api/v1/chat/credit", headers={"Authorization": b"Bearer \xff\xfe"}),
     401, "You do not have access permissions"),
    ("basic-auth", request_bytes("GET", "/api/v1/chat/credit", headers={"Authorization": "Basic x"}), 401,
     "malformed"),
    ("record-info-unknown", request_bytes("GET", "/api/v1/generate/record-info?taskId=nope"), 422,
     "recordInfo is null"),
]


@pytest.mark.parametrize("data, code, says", [pytest.param(d, c, s, id=i) for i, d, c, s in WIRE_CASES])
def test_real_server_wire_cases(server, data, code, says):
    status, headers, payload = raw(server, data)
    env = envelope_of(status, headers, payload)
    assert (status, env["code"]) == (200, code) and says in env["msg"], env


@pytest.mark.parametrize("data, status, allow", [
    pytest.param(request_bytes("GET", "/no/such/path"), 404, None, id="unknown-path"),
    pytest.param(request_bytes("GET", "/api/v1/%ff%fe"), 404, None, id="path-not-utf8-once-decoded"),
    pytest.param(request_bytes("DELETE", URL), 405, "POST", id="delete-upload-cover"),
    pytest.param(request_bytes("PUT", "/api/v1/chat/credit"), 405, "GET, HEAD", id="put-credit"),
])
def test_real_server_unknown_paths_and_methods(server, data, status, allow):
    got, headers, payload = raw(server, data)
    env = envelope_of(got, headers, payload)
    assert got == status and env["code"] == 404
    if allow:
        assert headers["allow"] == allow


def test_real_server_head_and_options(server):
    status, headers, payload = raw(server, request_bytes("HEAD", "/api/v1/chat/credit"), method="HEAD")
    assert (status, payload) == (200, b"") and headers["content-type"].startswith("application/json")
    status, headers, payload = raw(server, request_bytes("OPTIONS", URL))
    env = envelope_of(status, headers, payload)
    assert status == 200 and set(env["data"]["allow"]) == {"OPTIONS", "POST"}


@pytest.mark.parametrize("garbage", [
    pytest.param(b"GARBAGE\r\n\r\n", id="request-line"),
    pytest.param(b"GET / HTTP/9.9\r\n\r\n", id="http-9.9"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00", id="tls-hello"),
    pytest.param(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="70k-uri"),
])
def test_real_server_survives_protocol_garbage(server, garbage):
    """Below the app (the HTTP server's own parser) the answer may be its own error page or a
    closed connection, but never a 500, and the server keeps serving."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError, socket.timeout):
            pass
    assert not reply.startswith(b"HTTP/1.1 500") and not reply.startswith(b"HTTP/1.0 500"), reply[:200]
    status, headers, payload = raw(server, request_bytes("GET", "/api/v1/chat/credit"))
    assert envelope_of(status, headers, payload)["code"] == 200


def test_real_server_a_slow_request_does_not_hold_up_the_others(server):
    """An injected latency waits in a thread: requests of other clients are answered meanwhile."""
    import threading

    slow: dict = {}

    def slow_request():
        started = time.monotonic()
        slow["answer"] = raw(server, request_bytes("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=1.5"}))
        slow["took"] = time.monotonic() - started

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.2)
    took = []
    for _ in range(5):
        started = time.monotonic()
        env = envelope_of(*raw(server, request_bytes("GET", "/api/v1/chat/credit")))
        took.append(time.monotonic() - started)
        assert env["code"] == 200
    thread.join()
    assert envelope_of(*slow["answer"])["code"] == 200 and slow["took"] >= 1.5
    assert max(took) < 1.0, took  # answered while the slow one was still waiting


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_real_server_concurrent_covers_take_exactly_the_credits(front_end):
    """40 clients at once, credits for 10 covers: the writes the server batches (one transaction
    for the covers that arrive together) still charge each cover on its own: exactly 10 are
    accepted, each stored with its own taskId, the other 30 refused with 402, the balance 0."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    key = "batch-key-0123"
    auth = {"Authorization": f"Bearer {key}"}
    with serving("--clock", "virtual", "--rate-limit", "0", "--api-keys", f"{key}:120",
                 front_end=front_end) as port:
        start = threading.Barrier(40)

        def submit(_):
            start.wait()
            payload = orjson.dumps(LOOPBACK_BODY)
            return envelope_of(*raw(port, request_bytes("POST", URL, payload, auth)))

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(submit, range(40)))
        codes = sorted(a["code"] for a in answers)
        assert codes == [200] * 10 + [402] * 30
        task_ids = {a["data"]["taskId"] for a in answers if a["code"] == 200}
        assert len(task_ids) == 10
        for task_id in task_ids:
            got = envelope_of(*raw(port, request_bytes("GET", f"/api/v1/generate/record-info?taskId={task_id}",
                                                       headers=auth)))
            assert got["code"] == 200 and got["data"]["taskId"] == task_id
        assert envelope_of(*raw(port, request_bytes("GET", "/api/v1/chat/credit", headers=auth)))["data"] == 0
