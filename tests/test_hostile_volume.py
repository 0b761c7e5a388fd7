"""Issue 6 (6): hostile input at volume against the production server (each HTTP front end, default store):
slow clients, header floods, truncated and random bodies. No 500, no crash, memory bounded.

Bounded in count and time; loopback only. The figures are not timed assertions: the server
must still answer correctly afterwards, and its memory must stay within a generous bound.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import orjson
import pytest

from test_transport import LOOPBACK_BODY, URL, envelope_of, raw, request_bytes
from test_transport import server  # noqa: F401  (the module-scoped `kie-mock serve` fixture)


def _rss_kib(pid: int) -> int:
    """VmRSS of the process and its children (worker processes), in KiB."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def _server_pid(port: int) -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and str(port).encode() in cmd:
                return int(name)
    return None


def _healthy(port: int) -> None:
    status, headers, data = raw(port, request_bytes("POST", URL, orjson.dumps(LOOPBACK_BODY)))
    env = envelope_of(status, headers, data)
    assert env["code"] == 200, env


def test_a_slow_client_does_not_hold_up_the_others(server):  # noqa: F811
    request = request_bytes("POST", URL, orjson.dumps(LOOPBACK_BODY))
    done = threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", server), timeout=10) as s:
            for i in range(0, len(request), 16):  # the whole request over about a second
                s.sendall(request[i:i + 16])
                time.sleep(1.0 / (len(request) / 16))
            s.recv(4096)
        done.set()

    t = threading.Thread(target=trickle)
    t.start()
    for _ in range(20):
        _healthy(server)
    t.join(15)
    assert done.is_set(), "the slow client was never answered"


def test_header_floods_are_refused_without_a_500(server):  # noqa: F811
    for n in (100, 1000, 5000):
        headers = {f"X-Flood-{i}": "v" * 100 for i in range(n)}
        data = request_bytes("GET", "/api/v1/chat/credit", headers=headers)
        try:
            status, _, _ = raw(server, data)
        except (ConnectionError, OSError):
            status = None  # closing the connection is an acceptable refusal
        assert status != 500
    _healthy(server)


def test_truncated_and_abandoned_bodies_leave_the_server_serving(server):  # noqa: F811
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
            s.sendall(request_bytes("POST", URL, b'{"prompt": "x', {"Content-Length": "1000"}))
    _healthy(server)


def test_random_bodies_at_volume_get_envelopes_and_memory_stays_bounded(server):  # noqa: F811
    pid = _server_pid(server)
    rng = random.Random(6)
    valid = orjson.dumps(LOOPBACK_BODY)
    before = _rss_kib(pid) if pid else 0
    for i in range(600):
        kind = i % 4
        if kind == 0:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
        elif kind == 1:  # a valid body with bytes flipped
            b = bytearray(valid)
            for _ in range(3):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            payload = bytes(b)
        elif kind == 2:
            payload = valid[: rng.randrange(len(valid))]
        else:
            payload = b'{"prompt": "' + b"\xf0\x9f\x8e" * rng.randint(1, 2000) + b'"}'
        status, headers, data = raw(server, request_bytes("POST", URL, payload))
        env = envelope_of(status, headers, data)
        assert env["code"] in (200, 422), env
    _healthy(server)
    if pid:
        after = _rss_kib(pid)
        assert after < before + 200 * 1024, f"RSS grew from {before} KiB to {after} KiB over 600 requests"
    else:
        pytest.fail("could not find the server process to measure its memory")


WARMED_WORKER = r"""
import base64, os, pickle, resource, sys
from mock_server import server
from mock_server.config import Config

os.environ[server.ENV_CONFIG] = base64.b64encode(pickle.dumps(Config(store="memory", clock="virtual"))).decode()
app = server.worker_app()
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while len(held) < 10000:  # the gaps below the limit taken too: no descriptor left at all
        held.append(open("/dev/null"))
    raise SystemExit("descriptors are still free")
except OSError:
    pass
c = app.test_client()
auth = {"Authorization": "Bearer kie-mock-key"}
good = {"uploadUrl": "https://s.example/a.mp3", "customMode": True, "instrumental": False, "model": "V4_5",
        "style": "rock", "title": "t", "prompt": "p", "callBackUrl": "https://s.example/cb",
        "vocalGender": "f", "styleWeight": 0.5}
print(c.post("/api/v1/generate/upload-cover", json=good, headers=auth).get_json()["code"],
      c.post("/api/v1/generate/upload-cover", json={**good, "callBackUrl": "no url"}, headers=auth).get_json()["code"],
      c.get("/_mock/health").status_code, c.get("/api/v1/chat/credit", headers=auth).get_json()["data"])
"""


def test_a_worker_answers_its_first_requests_without_opening_a_file():
    """With every descriptor taken by idle connections, a fresh worker answered its first cover
    (and Flask's first request) with a 500: the schemas and lazy imports could not be opened."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", WARMED_WORKER], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["200", "422", "200", "988"], r.stdout + r.stderr[-2000:]


def test_serve_raises_its_open_files_limit_to_the_hard_one(tmp_path):
    import resource
    import subprocess
    import sys

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "serve", "--port", str(number)],
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "listening" in proc.stdout.readline()
        _healthy(number)
        pid = _server_pid(number)
        limits = open(f"/proc/{pid}/limits").read()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3] != "256", line  # the soft limit, in the worker that serves
    finally:
        proc.terminate()
        proc.wait(30)


def test_on_redis_clients_that_stop_halfway_through_their_bodies_hold_up_nobody():
    """On Redis the fake ran on granian's WSGI threads, where each slow body blocked a thread: four
    clients that sent 5 bytes of a 1,000-byte body held every other client off for as long as they
    stayed. Now the built-in server reads bodies on its event loop for every store, and a Redis
    store's round trips overlap in its pool; an injected latency there is still a timer."""
    import contextlib

    from test_transport import serving
    from test_workers import redis_url

    with serving("--store", redis_url(), "--rate-limit", "0", "--clock", "virtual", front_end="builtin") as port:
        head = request_bytes("POST", URL, b"", {"Content-Length": "1000", "Connection": "keep-alive"})
        with contextlib.ExitStack() as stack:
            for _ in range(16):
                c = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                c.sendall(head + b'{"pro')
            for _ in range(3):  # answered while they wait (raw() gives up after 10 s)
                _healthy(port)
            slow = [threading.Thread(target=lambda: results.append(
                raw(port, request_bytes("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=1"}))[0]))
                for _ in range(12)]
            results: list = []
            for t in slow:
                t.start()
            for t in slow:
                t.join(15)
            assert results == [200] * 12
