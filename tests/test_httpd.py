"""The built-in HTTP/1.1 server (mock_server/httpd.py): framing, order, limits and timeouts on a
real socket, in process; and `serve --workers 2` on it: a worker that dies is replaced, and the
workers never outlive the server.

The wire cases every front end must pass (bad JSON, chunked bodies, HTTP/1.0, garbage, slow
clients, header floods) are in test_transport.py and test_hostile_volume.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson
import pytest
import uvloop

from conftest import KEY, alive, body, child_pids, named_pids
from mock_server import httpd, server
from mock_server.app import create_app
from mock_server.config import Config
from mock_server.onloop import OnLoop

URL = "/api/v1/generate/upload-cover"
COVER = orjson.dumps(body(callBackUrl="http://127.0.0.1:9/cb"))


@contextlib.contextmanager
def running(sndbuf: int | None = None, pooled: bool | None = None, **cfg):
    """The built-in server on a free loopback port, in a thread of this process: (port, service).
    `with running(...) as (port, svc)`; the HttpServer is `svc.httpd` (for its connections)."""
    cfg = {"clock": "virtual", "rate_limit": 0, **cfg}
    app = create_app(Config(**cfg), start_scheduler=False)
    svc = app.extensions["kie_mock"]
    on_loop = OnLoop(svc, app, pooled=pooled)
    sock = socket.create_server(("127.0.0.1", 0))
    if sndbuf:  # the accepted connections inherit it: the kernel holds less of an answer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    loop = uvloop.new_event_loop()
    stop = asyncio.Event()
    svc.httpd = server = httpd.HttpServer(on_loop)
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(sock, stop),))
    thread.start()
    try:
        yield sock.getsockname()[1], svc
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"
        on_loop.close()
        loop.close()
        sock.close()


def request(method: str, path: str, payload: bytes = b"", headers: dict | None = None,
            version: str = "HTTP/1.1") -> bytes:
    h = {"Host": "127.0.0.1", "Authorization": f"Bearer {KEY}", **(headers or {})}
    if payload or method == "POST":
        h.setdefault("Content-Type", "application/json")
        h.setdefault("Content-Length", str(len(payload)))
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def read_response(f) -> tuple[int, dict, bytes]:
    """One response from a socket's file, by its own framing (Content-Length)."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    status = int(line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


def envelope(payload: bytes) -> dict:
    env = orjson.loads(payload)
    assert set(env) == {"code", "msg", "data"}, env
    return env


@contextlib.contextmanager
def connect(port: int, timeout: float = 10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with s.makefile("rb") as f:
            yield s, f


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def credits(svc) -> int:
    return svc.store.get_account(KEY)["credits"]


# -- order and framing -------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order_even_when_the_first_waits_for_its_write():
    """A cover waits for its batched store write, a control-API request runs in the thread pool;
    the requests sent after them on the same connection are answered after them, in order."""
    with running() as (port, svc), connect(port) as (s, f):
        start = credits(svc)
        s.sendall(request("POST", URL, COVER) + request("GET", "/api/v1/chat/credit")
                  + request("GET", "/_mock/health") + request("GET", "/api/v1/chat/credit"))
        answers = [read_response(f) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 200]
        cover, credit, health, credit2 = (envelope(a[2]) for a in answers)
        assert cover["code"] == 200 and cover["data"]["taskId"]
        assert credit["data"] == credit2["data"] == start - 12  # answered after the cover's write
        assert health["data"]["status"] == "ok" if isinstance(health["data"], dict) else health["code"] == 200


def test_more_pipelined_requests_than_the_queue_holds_are_all_answered_in_order():
    """Past PIPELINE_MAX queued requests the connection stops reading, and reads again as the
    queue drains: nothing is lost or reordered."""
    n = httpd.PIPELINE_MAX * 3
    with running() as (port, svc), connect(port) as (s, f):
        start = credits(svc)
        s.sendall(b"".join(request("POST", URL, COVER) + request("GET", "/api/v1/chat/credit") for _ in range(n)))
        seen = [envelope(read_response(f)[2]) for _ in range(2 * n)]
    covers, balances = seen[0::2], seen[1::2]
    assert all(c["code"] == 200 for c in covers)
    assert [b["data"] for b in balances] == [start - 12 * (i + 1) for i in range(n)]
    assert len({c["data"]["taskId"] for c in covers}) == n


def test_keep_alive_serves_many_requests_and_http_1_0_closes_after_one():
    with running() as (port, _), connect(port) as (s, f):
        for _ in range(3):
            s.sendall(request("GET", "/api/v1/chat/credit"))
            status, headers, _ = read_response(f)
            assert status == 200 and "connection" not in headers and "date" in headers
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit", version="HTTP/1.0"))
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close"
        assert f.read() == b""  # the server closed


def test_connection_close_is_honoured():
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit", headers={"Connection": "close"}))
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close" and f.read() == b""


def test_head_has_the_headers_and_no_body():
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("HEAD", "/api/v1/chat/credit") + request("GET", "/api/v1/chat/credit"))
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200")
        headers = {}
        while (line := f.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        assert int(headers["content-length"]) > 0  # what a GET would carry; none follows
        status, _, payload = read_response(f)  # the next response starts right away
        assert status == 200 and envelope(payload)["code"] == 200


def test_expect_100_continue_gets_its_interim_answer_then_the_response():
    with running() as (port, _), connect(port) as (s, f):
        head = request("POST", URL, b"", {"Content-Length": str(len(COVER)), "Expect": "100-continue"})
        s.sendall(head)
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        s.sendall(COVER)
        status, _, payload = read_response(f)
        assert status == 200 and envelope(payload)["code"] == 200


def test_an_upgrade_request_is_answered_as_http_1_1_then_the_connection_closes():
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit", headers={"Connection": "Upgrade", "Upgrade": "h2c"}))
        status, headers, payload = read_response(f)
        assert status == 200 and envelope(payload)["code"] == 200 and headers["connection"] == "close"
        assert f.read() == b""


def test_a_client_gone_before_its_cover_is_written_loses_nothing_and_breaks_nothing():
    with running() as (port, svc):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request("POST", URL, COVER))
        deadline = time.monotonic() + 5
        while not svc.store.list_tasks() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(svc.store.list_tasks()) == 1  # acknowledged or not, the write it reached is kept
        with connect(port) as (s, f):
            s.sendall(request("GET", "/api/v1/chat/credit"))
            assert envelope(read_response(f)[2])["code"] == 200


# -- limits -----------------------------------------------------------------------------------------
def _head_bytes(data: bytes) -> int:
    """What the server counts against HEAD_MAX: the target, and each header's name and value plus 4."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    target = head[0].split(b" ")[1]
    return len(target) + sum(len(name) + len(value.strip()) + 4
                             for name, _, value in (line.partition(b":") for line in head[1:]))


def _answer(port: int, data: bytes) -> tuple[int, dict, bytes, bool]:
    with connect(port) as (s, f):
        s.sendall(data)
        status, headers, payload = read_response(f)
        s.settimeout(2)
        return status, headers, payload, headers.get("connection") == "close" and closed_by_server(s)


@pytest.mark.parametrize("fields, refused", [(httpd.HEADERS_MAX - 1, False), (httpd.HEADERS_MAX, False),
                                             (httpd.HEADERS_MAX + 1, True)])
def test_header_count_limit(fields, refused):
    base = request("GET", "/api/v1/chat/credit")
    given = base.count(b"\r\n") - 2  # request line and the blank line are not fields
    extra = {f"X-F{i}": "v" for i in range(fields - given)}
    data = request("GET", "/api/v1/chat/credit", headers=extra)
    assert data.count(b"\r\n") - 2 == fields
    with running() as (port, _):
        status, _, payload, closed = _answer(port, data)
        if refused:
            assert (status, envelope(payload)["code"], closed) == (431, 431, True)
        else:
            assert (status, envelope(payload)["code"]) == (200, 200)


@pytest.mark.parametrize("over", [-1, 0, 1])
def test_header_bytes_limit(over):
    probe = request("GET", "/api/v1/chat/credit", headers={"X-Pad": ""})
    pad = httpd.HEAD_MAX + over - _head_bytes(probe)
    data = request("GET", "/api/v1/chat/credit", headers={"X-Pad": "p" * pad})
    assert _head_bytes(data) == httpd.HEAD_MAX + over
    with running() as (port, _):
        status, _, payload, closed = _answer(port, data)
        if over > 0:
            assert (status, closed) == (431, True) and "too large" in envelope(payload)["msg"]
        else:
            assert (status, envelope(payload)["code"]) == (200, 200)


def test_a_request_line_over_the_limit_is_refused_with_414():
    data = request("GET", "/api/v1/chat/credit?pad=" + "p" * httpd.HEAD_MAX)
    with running() as (port, _):
        status, _, payload, closed = _answer(port, data)
        assert (status, envelope(payload)["code"], closed) == (414, 414, True)


@pytest.mark.parametrize("garbage", [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"])
def test_malformed_http_gets_a_400_envelope_and_the_connection_closes(garbage):
    with running() as (port, _):
        status, headers, payload, closed = _answer(port, garbage)
        env = envelope(payload)
        assert (status, env["code"], closed) == (400, 422, True) and "malformed" in env["msg"]
        assert headers["content-type"] == "application/json"
        with connect(port) as (s, f):  # and the server goes on
            s.sendall(request("GET", "/api/v1/chat/credit"))
            assert read_response(f)[0] == 200


@pytest.mark.parametrize("size, early", [(999, False), (1000, False), (1001, False), (1002, True)])
def test_body_limit_at_its_boundary(size, early):
    """max_body_bytes 1000: bodies of 999 and 1000 bytes are read and judged; 1001 is read, and
    too large; a declared 1002 is answered at once, unread, and the connection closes."""
    payload = COVER[:-1] + b" " * (size - len(COVER)) + b"}"
    assert len(payload) == size
    with running(max_body_bytes=1000) as (port, _):
        with connect(port) as (s, f):
            s.sendall(request("POST", URL, payload if not early else b"", {"Content-Length": str(size)}))
            status, headers, answer = read_response(f)
            env = envelope(answer)
            if size <= 1000:
                assert env["code"] == 200
            else:
                assert env["code"] == 422 and "too large" in env["msg"]
            assert (headers.get("connection") == "close") is early


def test_a_chunked_body_over_the_limit_is_too_large_and_not_kept():
    chunk = b"x" * 600
    data = request("POST", URL, b"", {"Transfer-Encoding": "chunked", "Content-Length": None}) + b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    with running(max_body_bytes=1000) as (port, _):
        with connect(port) as (s, f):
            s.sendall(data)
            env = envelope(read_response(f)[2])
            assert env["code"] == 422 and "too large" in env["msg"]


# -- time -------------------------------------------------------------------------------------------
@pytest.fixture
def quick_timeouts(monkeypatch):
    monkeypatch.setattr(httpd, "SWEEP_EVERY", 0.05)
    monkeypatch.setattr(httpd, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(httpd, "KEEP_ALIVE", 1.0)
    monkeypatch.setattr(httpd, "LINGER", 1.0)
    monkeypatch.setattr(httpd, "CLOSE_GRACE", 1.0)


def test_a_request_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(quick_timeouts):
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("POST", URL, COVER)[:40])  # and then nothing
        started = time.monotonic()
        status, _, payload = read_response(f)
        assert (status, envelope(payload)["code"]) == (408, 408)
        assert 0.9 < time.monotonic() - started < 6 and f.read() == b""


def test_a_slow_request_within_the_time_is_served(quick_timeouts):
    data = request("POST", URL, COVER)
    with running() as (port, _), connect(port) as (s, f):
        for i in range(0, len(data), len(data) // 4 + 1):  # four pieces over about 0.3 s (the limit: 1 s)
            s.sendall(data[i:i + len(data) // 4 + 1])
            time.sleep(0.08)
        assert envelope(read_response(f)[2])["code"] == 200


def test_an_idle_keep_alive_connection_is_closed_after_its_time(quick_timeouts):
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit"))
        assert read_response(f)[0] == 200
        time.sleep(0.3)
        s.sendall(request("GET", "/api/v1/chat/credit"))  # still open within the keep-alive time
        assert read_response(f)[0] == 200
        started = time.monotonic()
        assert f.read() == b""  # then closed, idle
        assert 0.9 < time.monotonic() - started < 6


# -- worker processes -------------------------------------------------------------------------------
def _workers(pid: int) -> list[int]:
    return named_pids(pid, server.WORKER_NAME)


def _schedulers(pid: int) -> list[int]:
    return named_pids(pid, server.SCHEDULER_NAME)


def _wait(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _credit_ok(port: int) -> bool:
    try:
        with connect(port, timeout=5) as (s, f):
            s.sendall(request("GET", "/api/v1/chat/credit"))
            return envelope(read_response(f)[2])["code"] == 200
    except OSError:
        return False


@contextlib.contextmanager
def two_workers(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "serve", "--port", str(port), "--workers", "2",
                             "--store", f"sqlite:{tmp_path / 'kie.sqlite'}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _wait(lambda: _credit_ok(port) and len(_workers(proc.pid)) == 2 and len(_schedulers(proc.pid)) == 1
                     ), proc.stdout.read1(65536)
        yield proc, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_them_all(tmp_path):
    with two_workers(tmp_path) as (proc, port):
        first, second = _workers(proc.pid)
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: len(_workers(proc.pid)) == 2 and first not in _workers(proc.pid))
        assert second in _workers(proc.pid)
        assert all(_credit_ok(port) for _ in range(10))
        workers = child_pids(proc.pid)  # the scheduler process too
        assert len(workers) == 3
        proc.terminate()
        assert proc.wait(20) == 0
        assert not any(alive(w) for w in workers)


def test_the_workers_die_with_the_server_even_when_it_is_killed(tmp_path):
    """SIGKILL to the server process alone (not its group): its workers go too, and the port is
    free for a restart."""
    with two_workers(tmp_path) as (proc, port):
        workers = child_pids(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait(lambda: not any(alive(w) for w in workers), 10)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server binds
            s.bind(("127.0.0.1", port))  # nobody listens on it any more
            s.listen()


def test_repeating_one_header_counts_every_field():
    base = request("GET", "/api/v1/chat/credit")
    given = base.count(b"\r\n") - 2
    repeated = "".join(f"X-Same: {i}\r\n" for i in range(httpd.HEADERS_MAX - given + 1)).encode()
    data = base[:-2] + repeated + b"\r\n"
    with running() as (port, _):
        status, _, payload, closed = _answer(port, data)
        assert (status, closed) == (431, True)


# -- found in review: each of these failed before its fix ---------------------------------------------
def recv_until_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def test_thousands_of_pipelined_requests_answered_at_once_are_all_answered():
    """Answered requests start the next one in a loop, not by recursion (which ran out of stack)."""
    n = 3000
    with running() as (port, _), connect(port, timeout=30) as (s, f):
        s.sendall(request("GET", "/_mock/health") + request("GET", "/api/v1/chat/credit") * n)
        answers = [read_response(f) for _ in range(n + 1)]
    assert [a[0] for a in answers] == [200] * (n + 1)
    assert all(envelope(a[2])["code"] == 200 for a in answers)


def test_a_client_that_does_not_read_its_answers_is_not_served_further_and_is_reset(quick_timeouts):
    """Once the answers back up (the client reads none) the connection stops serving and
    reading; past REQUEST_TIMEOUT it is reset, and nothing of it stays in the server."""
    with running(journal_limit=100) as (port, svc):
        for i in range(100):
            svc.journal.add({"n": i, "pad": "x" * 1000})  # /_mock/requests answers are then ~100 KB
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", port))
        c.sendall(request("GET", "/_mock/requests?limit=100") * 600)
        assert _wait(lambda: any(conn.write_paused for conn in svc.httpd.connections), 10)
        (conn,) = svc.httpd.connections
        buffered = conn.transport.get_write_buffer_size()
        assert buffered < 8 << 20  # not all 600 answers (about 60 MB) were made and buffered
        assert _wait(lambda: not svc.httpd.connections, 10)  # reset after its time
        c.close()


def test_one_endless_header_value_is_refused_before_it_is_whole():
    """httptools keeps a header field until it ends: the raw head is bounded as it arrives."""
    with running() as (port, _), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/v1/chat/credit HTTP/1.1\r\nHost: x\r\nX-Big: ")
        reply = b""
        try:
            for _ in range(4 * httpd.HEAD_MAX // 4096):
                s.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = recv_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]


def test_a_client_that_half_closes_still_gets_every_answer():
    with running() as (port, _), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("GET", "/_mock/health") + request("POST", URL, COVER) + request("GET", "/api/v1/chat/credit"))
        s.shutdown(socket.SHUT_WR)
        reply = recv_until_closed(s)
    assert reply.count(b"HTTP/1.1 200") == 3 and reply.count(b'"code":200') == 3


def test_an_upgrade_request_keeps_its_body():
    """curl --http2 on http:// adds "Upgrade: h2c" to a POST; httptools would skip its body."""
    head = request("POST", URL, COVER, {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                        "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"})
    with running() as (port, svc):
        for split in (len(head), len(head) - len(COVER) // 2):  # the body in the head's read, or after it
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head[:split])
                time.sleep(0.05)
                s.sendall(head[split:])
                reply = recv_until_closed(s)
            status, _, payload = read_response(__import__("io").BytesIO(reply))
            assert status == 200 and envelope(payload)["code"] == 200, reply
        assert len(svc.store.list_tasks()) == 2


def test_garbage_after_a_request_in_progress_answers_that_request_first():
    with running() as (port, svc), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("POST", URL, COVER) + b"GARBAGE\r\n\r\n")
        reply = recv_until_closed(s)
        assert reply.startswith(b"HTTP/1.1 200") and b'"taskId"' in reply
        assert b"HTTP/1.1 400" in reply and reply.index(b"HTTP/1.1 400") > reply.index(b"HTTP/1.1 200")
        assert len(svc.store.list_tasks()) == 1


def test_an_unread_body_over_the_limit_does_not_cost_the_client_its_answer():
    """Answered before the body was read: the server reads and drops the rest for a while
    instead of closing at once (which would reset the connection under the client's upload)."""
    import http.client

    with running(max_body_bytes=1000) as (port, _):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", URL, body=b"{" + b" " * (8 << 20) + b"}",
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        env = envelope(r.read())
        assert env["code"] == 422 and "too large" in env["msg"]
        conn.close()


def test_100_continue_waits_for_the_answers_before_it():
    slow = request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=0.3"})  # answered from the pool
    head = request("POST", URL, b"", {"Content-Length": str(len(COVER)), "Expect": "100-continue"})
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(slow + head)
        status, _, payload = read_response(f)
        assert status == 200 and envelope(payload)["code"] == 200  # the earlier request's answer comes first
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        s.sendall(COVER)
        status, _, payload = read_response(f)
        assert envelope(payload)["code"] == 200


def test_a_trailer_never_becomes_a_header():
    data = (request("GET", "/api/v1/chat/credit", headers={"Authorization": None, "Transfer-Encoding": "chunked"})
            + b"0\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n")
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(data)
        assert envelope(read_response(f)[2])["code"] == 401


def test_http_1_0_keep_alive_is_said_and_kept():
    with running() as (port, _), connect(port) as (s, f):
        for _ in range(2):
            s.sendall(request("GET", "/api/v1/chat/credit", headers={"Connection": "keep-alive"}, version="HTTP/1.0"))
            status, headers, _ = read_response(f)
            assert status == 200 and headers["connection"] == "keep-alive"


def test_stray_line_ends_between_requests_do_not_start_a_timeout(quick_timeouts):
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit"))
        assert read_response(f)[0] == 200
        s.sendall(b"\r\n")  # tolerated between messages; not the start of a request
        time.sleep(0.5)
        s.sendall(request("GET", "/api/v1/chat/credit"))
        assert read_response(f)[0] == 200  # not a 408


def test_stopping_answers_the_requests_in_progress_and_keeps_what_they_stored():
    """A request in the pool (an injected latency) when the server is told to stop is answered,
    its task stored and its journal entry written."""
    with running() as (port, svc):
        with connect(port) as (s, f):
            s.sendall(request("POST", URL, COVER, {"Prefer": "latency=0.5"}))
            time.sleep(0.1)
            svc.httpd.stopping = True  # what serve() sets first when told to stop
            status, headers, payload = read_response(f)
            assert envelope(payload)["code"] == 200 and headers["connection"] == "close"
    assert len(svc.store.list_tasks()) == 1
    assert [e["code"] for e in svc.journal.read()] == [200]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_stopping_ends_the_workers_at_once_and_cleans_up(sig, workers):
    """Asked twice (a supervisor's second SIGTERM, a second Ctrl-C) while a worker still drains a
    request: the workers are killed, the server exits cleanly and removes its default store."""
    import re

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "serve", "--port", str(port), "--workers", workers],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert _wait(lambda: _credit_ok(port) and len(_workers(proc.pid)) == int(workers))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=8"}))
        time.sleep(0.3)
        proc.send_signal(sig)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(10) == 0 and time.monotonic() - started < 5  # not the 8 s drain
        output = proc.stdout.read().decode()
        slow.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    assert "Traceback" not in output, output
    store = re.search(r"store: sqlite:(\S+?)[;)]", output).group(1)
    assert not os.path.exists(os.path.dirname(store)), output


# -- found in the second review ----------------------------------------------------------------------
def test_pipelined_requests_behind_a_slow_one_are_not_all_parsed_ahead():
    """Past PIPELINE_MAX queued requests the rest of a read waits unparsed (at most one slice
    more is parsed), and all of it is answered in order once the slow request is."""
    credit = request("GET", "/api/v1/chat/credit")
    n = 200_000 // len(credit)
    with running() as (port, svc), connect(port, timeout=30) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=0.5"}) + credit * n)
        time.sleep(0.3)
        (conn,) = svc.httpd.connections
        assert conn.busy and len(conn.queue) <= httpd.PIPELINE_MAX + httpd.FEED_SLICE // len(credit) + 1
        answers = [read_response(f) for _ in range(n + 1)]
    assert all(a[0] == 200 and envelope(a[2])["code"] == 200 for a in answers)


def test_a_large_answer_read_slowly_is_sent_whole_before_the_close(quick_timeouts):
    """The lingering time starts once the answer is sent, not when the close was decided."""
    with running(sndbuf=16384, journal_limit=100) as (port, svc):
        for i in range(100):
            svc.journal.add({"n": i, "pad": "x" * 10_000})
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        c.connect(("127.0.0.1", port))
        c.sendall(request("GET", "/_mock/requests?limit=100", headers={"Connection": "close"}))
        got = b""
        started = time.monotonic()
        c.settimeout(10)
        while chunk := c.recv(16384):
            got += chunk
            time.sleep(0.05)  # about 300 KB/s: the answer (about 1 MB) takes longer than LINGER
        c.close()
    assert time.monotonic() - started > httpd.LINGER
    head, _, payload = got.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert len(payload) == length and len(envelope(payload)["data"]) == 100


def test_an_upgrade_request_expecting_100_continue_behind_a_slow_one_gets_it_in_order():
    slow = request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=0.3"})
    head = request("POST", URL, b"", {"Content-Length": str(len(COVER)), "Expect": "100-continue",
                                      "Connection": "Upgrade", "Upgrade": "h2c"})
    with running() as (port, svc), connect(port) as (s, f):
        s.sendall(slow + head)
        assert read_response(f)[0] == 200
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        s.sendall(COVER)
        status, headers, payload = read_response(f)
        assert envelope(payload)["code"] == 200 and headers["connection"] == "close"
        assert len(svc.store.list_tasks()) == 1


def test_pipelined_bodies_behind_a_slow_request_are_bounded_in_bytes_too():
    """Sixteen 1 MiB bodies could wait behind one slow request: past PIPELINE_BYTES of queued
    bodies the rest waits unparsed, and is answered in order afterwards."""
    big = request("POST", URL, COVER[:-1] + b" " * ((1 << 20) - 10 - len(COVER)) + b"}")  # under the limit
    with running() as (port, svc), connect(port, timeout=30) as (s, f):
        s.sendall(request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=1"}))
        sender = threading.Thread(target=s.sendall, args=(big * 6,))
        sender.start()
        time.sleep(0.6)
        (conn,) = svc.httpd.connections
        assert conn.busy and conn.queued_bytes <= httpd.PIPELINE_BYTES + (1 << 20)
        assert len(conn.queue) < 6
        answers = [envelope(read_response(f)[2]) for _ in range(7)]
        sender.join()
    assert [a["code"] for a in answers] == [200] * 7
    assert len(svc.store.list_tasks()) == 6


# -- framing is independent of how the bytes arrive ------------------------------------------------------
def _chunked(payload: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + size]), payload[i:i + size])
                    for i in range(0, len(payload), size)) + b"0\r\n\r\n"


STREAM = [  # (request bytes, expected HTTP status, expected envelope code)
    (request("GET", "/api/v1/chat/credit"), 200, 200),
    (request("POST", URL, COVER), 200, 200),
    (request("POST", URL, b"", {"Transfer-Encoding": "chunked", "Content-Length": None}) + _chunked(COVER, 7), 200, 200),
    (request("GET", "/_mock/health"), 200, 200),
    (request("POST", URL, b'{"model": "V9"}'), 200, 422),
    (request("GET", "/api/v1/generate/record-info?taskId=nope"), 200, 422),
    (request("GET", "/no/such/path"), 404, 404),
    (request("GET", "/api/v1/chat/credit", headers={"Authorization": "Bearer wrong-key"}), 200, 401),
]


def test_the_answers_do_not_depend_on_how_the_bytes_are_split():
    """The same pipelined stream, cut at random places (each piece its own read), gets the same
    answers in the same order."""
    import random

    data = b"".join(r for r, _, _ in STREAM)
    expected = [(status, code) for _, status, code in STREAM]
    rng = random.Random(5)
    with running() as (port, svc):
        for trial in range(25):
            cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40))) if trial else []
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
            with connect(port) as (s, f):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for piece in pieces:
                    s.sendall(piece)
                    time.sleep(0.001)
                got = []
                for _ in STREAM:
                    status, _, payload = read_response(f)
                    got.append((status, envelope(payload)["code"]))
            assert got == expected, (trial, cuts)
        assert len(svc.store.list_tasks()) == 2 * 25


# -- found in the third review ------------------------------------------------------------------------
def test_one_endless_trailer_is_refused_before_it_is_whole_and_others_are_served_meanwhile():
    with running() as (port, _), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("POST", URL, b"", {"Transfer-Encoding": "chunked", "Content-Length": None})
                  + b"%x\r\n%s\r\n0\r\nX-T: " % (len(COVER), COVER))
        try:
            for _ in range(4 * httpd.HEAD_MAX // 4096):
                s.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        started = time.monotonic()
        assert _credit_ok(port) and time.monotonic() - started < 1.0  # the loop is not stuck on it
        reply = recv_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 431") and b"trailers" in reply, reply[:120]


def test_a_keep_alive_client_reading_a_large_answer_slowly_gets_all_of_it(quick_timeouts):
    """Its answers back up (write paused), but it reads: it is not reset while it makes progress."""
    with running(sndbuf=16384, journal_limit=100) as (port, svc):
        for i in range(100):
            svc.journal.add({"n": i, "pad": "x" * 10_000})
        with connect(port, timeout=10) as (s, f):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            s.sendall(request("GET", "/_mock/requests?limit=100"))
            line = f.readline()
            headers = {}
            while (line2 := f.readline()) != b"\r\n":
                name, _, value = line2.decode().partition(":")
                headers[name.lower()] = value.strip()
            length, got = int(headers["content-length"]), b""
            started = time.monotonic()
            while len(got) < length:
                got += f.read1(16384)
                time.sleep(0.05)  # about 300 KB/s: longer than REQUEST_TIMEOUT for about 1 MB
            assert line.startswith(b"HTTP/1.1 200") and time.monotonic() - started > httpd.REQUEST_TIMEOUT
            assert len(envelope(got)["data"]) == 100


def test_waiting_behind_a_slow_answer_does_not_count_against_a_request_s_time(quick_timeouts):
    """A request sent behind a slow one (its 100 Continue comes only after the slow answer) has
    REQUEST_TIMEOUT from then on, not from its first byte."""
    slow = request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=1.5"})
    head = request("POST", URL, b"", {"Content-Length": str(len(COVER)), "Expect": "100-continue"})
    with running() as (port, _), connect(port) as (s, f):
        s.sendall(slow + head)
        assert read_response(f)[0] == 200
        assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
        time.sleep(0.3)
        s.sendall(COVER)
        status, _, payload = read_response(f)
        assert (status, envelope(payload)["code"]) == (200, 200)


def test_lingering_ends_even_if_the_client_keeps_sending(quick_timeouts):
    with running() as (port, svc), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        deadline = time.monotonic() + 6
        gone = False
        while time.monotonic() < deadline and not gone:
            try:
                s.sendall(b"x")  # more often than LINGER
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
            gone = not svc.httpd.connections
        assert gone or not svc.httpd.connections
        assert time.monotonic() < deadline


def test_nothing_is_queued_on_a_connection_that_an_answer_closed():
    """While stopping, every answer closes its connection: a pipelined request parsed after it
    is not queued (it would hold up the shutdown's drain until its time ran out)."""
    with running() as (port, svc), connect(port) as (s, f):
        svc.httpd.stopping = True
        s.sendall(request("GET", "/api/v1/chat/credit") + request("GET", "/api/v1/chat/credit"))
        status, headers, _ = read_response(f)
        assert status == 200 and headers["connection"] == "close"
        assert all(not c.queue for c in svc.httpd.connections)
        assert f.read() == b""
        svc.httpd.stopping = False


def test_a_chunked_body_reaches_the_control_api_whole():
    """The server takes the chunks off; the Flask routes (control API) must then read the body by
    its length: with Transfer-Encoding left in their environ they read nothing, and a chunked
    PUT of an account was answered 200 without changing it."""
    with running() as (port, svc), connect(port) as (s, f):
        put = orjson.dumps({"credits": 5})
        s.sendall(request("PUT", f"/_mock/accounts/{KEY}", b"", {"Transfer-Encoding": "chunked",
                                                                 "Content-Type": "application/json"})
                  + _chunked(put, 3))
        status, _, payload = read_response(f)
        assert (status, envelope(payload)["code"]) == (200, 200) and credits(svc) == 5
        s.sendall(request("PUT", f"/_mock/accounts/{KEY}", b"", {"Transfer-Encoding": "chunked",
                                                                 "Content-Type": "application/json"})
                  + _chunked(b'{"credits": "bad"}', 4))
        status, _, payload = read_response(f)
        assert (status, envelope(payload)["code"]) == (400, 400) and credits(svc) == 5


def test_injected_latency_holds_no_thread_so_many_slow_requests_overlap():
    """Prefer: latency is a timer on the loop: 24 requests of 1 s at once (three times the
    thread pool) are all answered about 1 s later, not in rounds of eight; a slow cover is
    still stored once, and a fast request is not held up meanwhile."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    from mock_server.onloop import POOL_THREADS

    n = 3 * POOL_THREADS

    def call(port, path, method="GET", body=None, prefer="latency=1"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        if prefer:
            headers["Prefer"] = prefer
        t0 = time.monotonic()
        conn.request(method, path, body=body, headers=headers)
        env = envelope(conn.getresponse().read())
        conn.close()
        return env, time.monotonic() - t0

    with running() as (port, svc), ThreadPoolExecutor(n + 1) as ex:
        t0 = time.monotonic()
        slow = [ex.submit(call, port, "/api/v1/chat/credit") for _ in range(n - 1)]
        cover = ex.submit(call, port, URL, "POST", COVER)
        time.sleep(0.2)
        fast_env, fast_took = call(port, "/api/v1/chat/credit", prefer=None)
        results = [f.result() for f in slow] + [cover.result()]
        elapsed = time.monotonic() - t0
    assert fast_env["code"] == 200 and fast_took < 0.5, fast_took
    assert all(env["code"] == 200 and took >= 1.0 for env, took in results), results
    assert elapsed < 1.9, elapsed  # in rounds of POOL_THREADS it took 3 s
    assert len(svc.store.list_tasks()) == 1


@pytest.mark.parametrize("name, value, status", [
    ("X-Admin-Token", "T0ken", 200), ("X-Admin-Token", "T0ken  \t", 200), ("X-Admin-Token", "  T0ken", 200),
    ("X_Admin_Token", "T0ken", 401), ("x_admin-token", "T0ken", 401), ("X-Admin-Token", "T0ke", 401),
])
def test_the_admin_token_header_is_read_as_a_proxy_would_pass_it(name, value, status):
    """Whitespace around a field's value is not part of it (granian strips it too); a name with
    '_' would pass for X-Admin-Token in WSGI's environ, past a proxy that strips or sets that
    header: dropped, as nginx drops it."""
    with running(admin_token="T0ken") as (port, _):
        with socket.create_connection(("127.0.0.1", port)) as c, c.makefile("rb") as f:
            c.sendall(request("GET", "/_mock/clock", headers={name: value}))
            assert read_response(f)[0] == status


def test_unfinished_bodies_are_bounded_per_worker_and_a_small_cover_still_gets_in(monkeypatch):
    """Many connections each holding most of a 1 MiB body grew a worker by hundreds of MiB (and
    a closed connection's buffer lived until a full collection): past the budget, a connection
    whose unfinished body is over PARTIAL_SMALL is refused (503); small bodies never are."""
    monkeypatch.setattr(httpd, "PARTIAL_BUDGET", 1 << 20)
    monkeypatch.setattr(httpd, "PARTIAL_SMALL", 64 << 10)
    head = request("POST", URL, headers={"Content-Length": str(1 << 20)})
    with running() as (port, svc):
        hogs = []
        for _ in range(8):  # 8 x 200 KiB would be 1.6 MiB
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(head + b"x" * (200 << 10))
            hogs.append(c)
        time.sleep(0.3)
        server = svc.httpd
        refused = []
        for c in hogs:
            c.settimeout(0.2)
            try:
                refused.append(c.recv(65536).split(b" ", 2)[1] == b"503")
            except socket.timeout:
                refused.append(False)
        assert sum(refused) >= 2, refused  # 1.6 MiB asked for, 1 MiB allowed
        assert server.partial_bytes == (8 - sum(refused)) * (200 << 10) <= (1 << 20) + 8 * (64 << 10)
        with socket.create_connection(("127.0.0.1", port)) as c, c.makefile("rb") as f:
            c.sendall(request("POST", URL, COVER))  # over the budget still: a whole small cover is served
            status, _, data = read_response(f)
            assert status == 200 and orjson.loads(data)["code"] == 200
        for c in hogs:
            c.close()
        deadline = time.monotonic() + 5
        while server.partial_bytes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.partial_bytes == 0  # freed as the connections closed


def test_a_connection_that_never_sends_a_byte_is_closed_sooner_than_an_idle_keep_alive_one(monkeypatch):
    monkeypatch.setattr(httpd, "FIRST_BYTE", 0.5)
    monkeypatch.setattr(httpd, "SWEEP_EVERY", 0.1)
    with running() as (port, _):
        silent = socket.create_connection(("127.0.0.1", port))
        used = socket.create_connection(("127.0.0.1", port))
        with used.makefile("rb") as f:
            used.sendall(request("GET", "/api/v1/chat/credit"))
            assert read_response(f)[0] == 200
            silent.settimeout(5)
            assert silent.recv(1) == b""  # closed by the server
            used.sendall(request("GET", "/api/v1/chat/credit"))  # the one that spoke is kept
            assert read_response(f)[0] == 200
        silent.close()
        used.close()


def test_api_requests_in_the_pool_wait_out_a_latency_on_a_timer_not_in_a_thread(monkeypatch):
    """With a Redis store the API requests run in the pool (8 threads): an injected latency must
    stay a timer on the loop, else more than 8 slow requests at once were served in rounds."""
    from mock_server import api

    slept = []
    monkeypatch.setattr(api.time, "sleep", slept.append)
    with running(pooled=True) as (port, svc):
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
        for c in conns:
            c.sendall(request("GET", "/api/v1/chat/credit", headers={"Prefer": "latency=0.3"}))
        for c in conns:
            with c, c.makefile("rb") as f:
                status, _, data = read_response(f)
                assert status == 200 and orjson.loads(data)["data"] == 1000
        assert slept == []  # no pool thread slept the latency away
        entries = svc.journal.read(100, path="/api/v1/chat/credit")
        assert len(entries) == 12 and {e["code"] for e in entries} == {200}  # journaled, by threads


def test_many_small_unfinished_bodies_are_bounded_too(monkeypatch):
    """Bodies under PARTIAL_SMALL are spared up to twice the budget, then refused as well."""
    monkeypatch.setattr(httpd, "PARTIAL_BUDGET", 1 << 20)
    monkeypatch.setattr(httpd, "PARTIAL_SMALL", 64 << 10)
    head = request("POST", URL, headers={"Content-Length": str(1 << 20)})
    with running() as (port, svc):
        conns = []
        for _ in range(48):  # 48 x 60 KiB = 2.8 MiB asked for
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(head + b"x" * (60 << 10))
            conns.append(c)
        time.sleep(0.5)
        assert (1 << 20) < svc.httpd.partial_bytes <= (2 << 20) + (60 << 10)
        refused = 0
        for c in conns:
            c.settimeout(0.05)
            try:
                refused += c.recv(65536).split(b" ", 2)[1] == b"503"
            except socket.timeout:
                pass
            c.close()
        assert refused >= 48 - (2 << 20) // (60 << 10) - 1
