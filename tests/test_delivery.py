"""The callback HTTP client (delivery.HttpDelivery) against real receivers on loopback: raw
sockets, so that each way a receiver can answer (or not) is written out byte for byte."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from mock_server.delivery import HttpDelivery, split_target

BODY = b'{"code":200,"msg":"Text generation completed.","data":{"callbackType":"text","task_id":"t","data":[]}}'


class RawReceiver:
    """Accepts connections; per request, `answer(request bytes, connection number)` gives the
    bytes to send back and whether to close the connection afterwards (None: never answer)."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.answer, self.tls = answer, tls
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request)
        self.connections = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn, n):
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append((n, head + b"\r\n\r\n" + rest[:length]))
                buf = rest[length:]
                reply = self.answer(head, n)
                if reply is None:
                    time.sleep(30)
                    return
                data, close = reply
                conn.sendall(data)
                if close:
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def url(self, path="/cb", scheme="http"):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self):
        self.stop = True
        self.srv.close()


def ok(status=200, extra=b""):
    return b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s\r\n{}" % (status, extra)


@pytest.fixture
def receivers():
    made = []
    yield lambda *a, **kw: made.append(RawReceiver(*a, **kw)) or made[-1]
    for r in made:
        r.close()


def test_keeps_the_connection_and_sends_one_well_formed_request(receivers):
    r = receivers(lambda head, n: (ok(), False))
    d = HttpDelivery(timeout=5)
    for _ in range(3):
        a = d(r.url("/cb?x=1"), BODY, {"X-Webhook-Signature": "abc="})
        assert (a.status, a.error, a.ok) == (200, None, True)
    assert r.connections == 1 and [n for n, _ in r.requests] == [1, 1, 1]
    head, _, body = r.requests[0][1].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /cb?x=1 HTTP/1.1" and body == BODY
    assert {b"Host: 127.0.0.1:%d" % r.port, b"Content-Type: application/json", b"User-Agent: kie-mock-callback/1",
            b"Content-Length: %d" % len(BODY), b"X-Webhook-Signature: abc="} == set(lines[1:])


@pytest.mark.parametrize("reply, status, reused", [
    (ok(503), 503, True),
    (ok(200, b"Connection: close\r\n"), 200, False),
    (b"HTTP/1.1 201 X\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 201, True),
    (b"HTTP/1.0 200 X\r\n\r\n{}", 200, False),  # read to the end of the connection
])
def test_each_way_of_framing_an_answer(receivers, reply, status, reused):
    close = b"Content-Length" not in reply and b"chunked" not in reply or b"close" in reply
    r = receivers(lambda head, n: (reply, close))
    d = HttpDelivery(timeout=5)
    assert [d(r.url(), BODY, {}).status for _ in range(2)] == [status, status]
    assert r.connections == (1 if reused else 2)


def test_a_kept_connection_the_receiver_closed_is_replaced_not_failed(receivers):
    r = receivers(lambda head, n: (ok(), True))  # answers keep-alive, then closes anyway
    d = HttpDelivery(timeout=5)
    assert d(r.url(), BODY, {}).status == 200
    time.sleep(0.2)  # its close has arrived
    assert d(r.url(), BODY, {}).status == 200
    assert r.connections == 2


def test_refused_unresolvable_timeout_and_bad_urls_are_failed_attempts(receivers):
    d = HttpDelivery(timeout=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert d(f"http://127.0.0.1:{closed_port}/cb", BODY, {}).error == "connection refused"
    assert d("http://no-such-host.invalid/cb", BODY, {}).error.startswith("cannot connect: ")
    silent = receivers(lambda head, n: None)
    started = time.monotonic()
    a = d(silent.url(), BODY, {})
    assert (a.status, a.error) == (None, "timeout after 0.5s") and 0.4 < time.monotonic() - started < 5
    half = receivers(lambda head, n: (b"HTTP/1.1 200 X\r\nContent-Length: 10\r\n\r\n{}", True))
    assert d(half.url(), BODY, {}).error.startswith("ConnectionError")  # closed inside the body
    for url in ("ftp://127.0.0.1/cb", "http:///cb", "http://127.0.0.1/a b"):
        assert d(url, BODY, {}).error.startswith("ValueError"), url
    assert d(silent.url(), BODY, {"X-A": "1\r\nX-B: 2"}).error.startswith("ValueError")
    assert not (a.ok or d(f"http://127.0.0.1:{closed_port}/cb", BODY, {}).ok)


def test_garbage_instead_of_an_answer_is_a_failed_attempt(receivers):
    r = receivers(lambda head, n: (b"SMTP ready\r\n\r\n", True))
    a = HttpDelivery(timeout=2)(r.url(), BODY, {})
    assert a.status is None and a.error.startswith("HttpParserError")


def test_https_with_the_receiver_s_certificate_verified(receivers, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    r = receivers(lambda head, n: (ok(), False), tls=server_tls)
    d = HttpDelivery(timeout=5)
    refused = d(r.url(scheme="https"), BODY, {})  # a self-signed certificate: not trusted
    assert refused.status is None and "CERTIFICATE_VERIFY_FAILED" in refused.error
    d._tls = ssl.create_default_context(cafile=str(cert))
    assert [d(r.url(scheme="https"), BODY, {}).status for _ in range(2)] == [200, 200]


@pytest.mark.parametrize("url, target", [
    ("http://a.example/cb", (("http", "a.example", 80), "/cb", "a.example")),
    ("https://a.example/cb", (("https", "a.example", 443), "/cb", "a.example")),
    ("http://a.example:8080", (("http", "a.example", 8080), "/", "a.example:8080")),
    ("HTTP://[::1]:9000/x?y=1&z", (("http", "::1", 9000), "/x?y=1&z", "[::1]:9000")),
])
def test_targets(url, target):
    assert split_target(url) == target


# -- found in review -------------------------------------------------------------------------------
def test_switching_protocols_is_an_answer_not_an_error(receivers):
    r = receivers(lambda head, n: (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
                                   True))
    a = HttpDelivery(timeout=2)(r.url(), BODY, {})
    assert (a.status, a.error, a.ok) == (101, None, False)


def test_informational_answers_come_before_the_answer(receivers):
    """100 Continue (or 103) and then the answer: the answer counts, and the next callback on the
    connection gets its own answer, not the rest of this one."""
    def answer(head, n):
        if b"first" in head:
            return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(200), False
        return ok(500), False
    r = receivers(answer)
    d = HttpDelivery(timeout=5)
    assert d(r.url("/first"), BODY, {}).status == 200
    assert d(r.url("/second"), BODY, {}).status == 500
    assert r.connections == 1


@pytest.mark.parametrize("reply, status", [
    (b"HTTP/1.1 204 No Content\r\n\r\n{}", 204),  # a body where none may be
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n{}", 200),
    (ok(200) + ok(500), 200),  # a second answer, unasked
])
def test_bytes_after_the_answer_leave_it_standing_and_the_connection_unused(receivers, reply, status):
    r = receivers(lambda head, n: (reply, False))
    d = HttpDelivery(timeout=5)
    assert [d(r.url(), BODY, {}).status for _ in range(2)] == [status, status]
    assert r.connections == 2


def test_a_body_to_the_end_of_the_connection_with_another_transfer_coding(receivers):
    r = receivers(lambda head, n: (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", True))
    assert HttpDelivery(timeout=5)(r.url(), BODY, {}).status == 200


def test_an_endless_answer_head_is_refused_early(receivers):
    r = receivers(lambda head, n: (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2_000_000, True))
    a = HttpDelivery(timeout=5)(r.url(), BODY, {})
    assert a.status is None and "answer head over" in a.error


def test_kept_connections_are_bounded_in_receivers_and_in_age(receivers, monkeypatch):
    from mock_server import delivery

    monkeypatch.setattr(delivery, "IDLE_HOSTS", 2)
    rs = [receivers(lambda head, n: (ok(), False)) for _ in range(3)]
    d = HttpDelivery(timeout=5)
    for r in rs:
        assert d(r.url(), BODY, {}).status == 200
    assert [k[2] for k in d._idle] == [rs[1].port, rs[2].port]  # the longest unused went
    monkeypatch.setattr(delivery, "IDLE_MAX_AGE", 0.0)
    assert d(rs[2].url(), BODY, {}).status == 200 and rs[2].connections == 2  # too old to reuse
    assert sum(len(v) for v in d._idle.values()) <= 1


def test_port_zero_is_refused_not_taken_for_the_default():
    assert HttpDelivery(timeout=1)("http://127.0.0.1:0/cb", BODY, {}).error.startswith("ValueError: port 0")


def test_a_name_that_resolves_slowly_times_out_within_the_callback_timeout(receivers, monkeypatch):
    """getaddrinfo has no timeout: a resolver that never answers must not hold the callback
    past its timeout (offline, an unreachable nameserver takes 5 s and more per try)."""
    real = socket.getaddrinfo
    release = threading.Event()

    def slow(host, *args, **kwargs):
        if host == "slow.example":
            release.wait(10)
        return real("127.0.0.1" if host in ("slow.example", "fast.example") else host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", slow)
    r = receivers(lambda head, n: (ok(), False))
    d = HttpDelivery(timeout=0.3)
    try:
        for _ in range(2):  # the second waits for a resolver thread of its own, not behind the first
            started = time.monotonic()
            a = d(f"http://slow.example:{r.port}/cb", BODY, {})
            assert (a.status, a.error) == (None, "timeout after 0.3s")
            assert time.monotonic() - started < 1.5
        a = d(f"http://fast.example:{r.port}/cb", BODY, {})  # resolved in time: delivered
        assert (a.status, a.error) == (200, None)
    finally:
        release.set()


def test_a_lookup_stuck_past_its_deadline_does_not_hold_up_the_process_exit():
    script = (
        "import socket, time\n"
        "real = socket.getaddrinfo\n"
        "socket.getaddrinfo = lambda *a, **k: time.sleep(20) or real('127.0.0.1', *a[1:], **k)\n"
        "from mock_server.delivery import HttpDelivery\n"
        "a = HttpDelivery(timeout=0.3)('http://stuck.example:9/cb', b'{}', {})\n"
        "print(a.error)\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "timeout after 0.3s", out.stdout + out.stderr
    assert time.monotonic() - started < 10, "the interpreter waited for the stuck lookup"
