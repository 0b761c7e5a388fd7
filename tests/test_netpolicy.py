"""The outbound allowlist is applied to the addresses the fake connects to: a name with one
allowed address among others, or one that answers otherwise the second time it is looked up
(DNS rebinding), cannot lead a callback or an uploadUrl fetch outside the list."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import body, submit
from mock_server import media
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config
from mock_server.delivery import HttpDelivery
from mock_server.netpolicy import Policy

NAME = "twohomed.test"
REAL_GETADDRINFO = socket.getaddrinfo


def _info(address: str, port: int):
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


@pytest.fixture
def dns(monkeypatch):
    """NAME resolves to answers[min(lookup number, last)]; other names as usual. Counts lookups."""
    state = {"answers": [["127.0.0.1"]], "lookups": 0}

    def getaddrinfo(host, port, *args, **kw):
        if host != NAME:
            return REAL_GETADDRINFO(host, port, *args, **kw)
        answers = state["answers"][min(state["lookups"], len(state["answers"]) - 1)]
        state["lookups"] += 1
        return [_info(a, int(port or 80)) for a in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


@pytest.fixture
def origin():
    """An HTTP server on 127.0.0.1 only (127.0.0.2 refuses): every request it got, with its Host."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, data: bytes):
            seen.append((self.command, self.path, self.headers.get("Host")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer(media.mp3_bytes(3))

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(b"{}")

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("host, patterns, verdict", [
    ("10.1.2.3", ("10.1.0.0/16",), True), ("10.2.0.1", ("10.1.0.0/16",), False),
    ("::ffff:10.1.2.3", ("10.1.0.0/16",), True), ("::ffff:127.0.0.1", ("10.1.0.0/16",), False),
    ("hooks.example.com", ("*.example.com",), True), ("hooks.example.com.", ("*.example.com",), True),
    ("hooks.example.com", ("10.1.0.0/16",), None),  # a name: resolved, then its addresses filtered
    ("hooks.example.com", ("ci.example.org",), False),  # no network in the list: no lookup needed
    ("", ("*",), False), ("anything", None, True),
])
def test_what_is_decided_without_a_lookup(host, patterns, verdict):
    assert Policy(patterns).verdict(host) is verdict


def test_only_the_allowed_addresses_of_a_name_are_kept():
    infos = [_info("127.0.0.1", 80), _info("10.20.0.5", 80), _info("169.254.169.254", 80),
             (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:10.20.0.9", 80, 0, 0))]
    kept = Policy(("10.20.0.0/16",)).pick(infos)
    assert [i[4][0] for i in kept] == ["10.20.0.5", "::ffff:10.20.0.9"]


@pytest.mark.parametrize("allow, reached", [(("127.0.0.2/32",), False), (("127.0.0.1/32",), True)])
def test_a_callback_goes_only_to_an_allowed_address_of_its_name(dns, origin, allow, reached):
    port, seen = origin
    dns["answers"] = [["127.0.0.1", "127.0.0.2"]]  # the resolver's order puts the refused one first
    attempt = HttpDelivery(timeout=2, allow=allow)(f"http://{NAME}:{port}/cb", b"{}", {})
    assert attempt.ok is reached and bool(seen) is reached, attempt
    if not reached:
        assert attempt.error == "connection refused"  # 127.0.0.2: nothing listens there
    dns["answers"] = [["127.0.0.1"]]
    blocked = HttpDelivery(timeout=2, allow=("127.0.0.2/32",))(f"http://{NAME}:{port}/cb", b"{}", {})
    assert blocked.error.startswith("blocked: callBackUrl host is not in the fake's outbound allowlist")
    assert f"{NAME} resolves to no allowed address" in blocked.error and len(seen) == int(reached)


def test_a_name_that_answers_otherwise_the_second_time_cannot_reach_past_the_list(dns, origin):
    """The scheduler decides nothing by resolving the name itself: the one lookup is the delivery's,
    and the address it checked is the one it connects to."""
    port, seen = origin
    dns["answers"] = [["127.0.0.2"], ["127.0.0.1"]]  # allowed first, then the receiver it must not reach
    clock = VirtualClock(0.0)
    app = create_app(Config(clock="virtual", outbound_allow=("127.0.0.2/32",), retry_delays=()), clock=clock)
    try:
        submit(app.test_client(), body(callBackUrl=f"http://{NAME}:{port}/cb"))
        clock.advance(3)
        attempts = app.extensions["kie_mock"].store.read_log("attempts")
        assert attempts and attempts[-1]["error"] == "connection refused" and seen == []
        assert dns["lookups"] == 1
    finally:
        app.extensions["kie_mock"].scheduler.stop()


@pytest.mark.parametrize("answers, allow, code", [
    ([["127.0.0.2", "127.0.0.1"]], ("127.0.0.2/32",), 451),  # two addresses, the allowed one refuses
    ([["127.0.0.2"], ["127.0.0.1"]], ("127.0.0.2/32",), 451),  # rebinding after the check
    ([["10.9.9.9"]], ("127.0.0.0/8",), 451),  # no allowed address at all
    ([["127.0.0.2", "127.0.0.1"]], ("127.0.0.0/8",), 200),  # the next allowed address answers
])
def test_an_upload_url_is_fetched_only_from_an_allowed_address(dns, origin, answers, allow, code):
    port, seen = origin
    dns["answers"] = answers
    app = create_app(Config(clock="virtual", source_check=True, source_timeout=2, outbound_allow=allow),
                     clock=VirtualClock(0.0))
    try:
        _, env = submit(app.test_client(), body(uploadUrl=f"http://{NAME}:{port}/song.mp3"))
    finally:
        app.extensions["kie_mock"].scheduler.stop()
    assert env["code"] == code, env
    if code == 200:  # reached by address, still asked for by name
        assert seen == [("GET", "/song.mp3", f"{NAME}:{port}")] and dns["lookups"] == 1
    else:
        assert seen == [] and env["msg"].startswith("Failed to fetch the audio file at uploadUrl")


def test_an_injected_delivery_still_gets_names_outside_the_list_blocked():
    """Only the fake's own HTTP delivery filters the addresses it connects to: a delivery given to
    create_app (a test's, the kit's loopback one) gets the name resolved and judged before."""
    from conftest import RecordingDelivery

    for allow, sent in ((("10.0.0.0/8",), 0), (("127.0.0.0/8",), 1)):
        clock, delivery = VirtualClock(0.0), RecordingDelivery()
        app = create_app(Config(clock="virtual", outbound_allow=allow, retry_delays=()), clock=clock, deliver=delivery)
        try:
            submit(app.test_client(), body(callBackUrl="http://localhost:9/cb"))
            clock.advance(2)
            attempt = app.extensions["kie_mock"].store.read_log("attempts")[0]
        finally:
            app.extensions["kie_mock"].scheduler.stop()
        assert len(delivery.calls) == sent
        assert (attempt["error"] or "").startswith("blocked") is (sent == 0), attempt


@pytest.mark.parametrize("pattern, refused", [("10.20.*", True), ("10.*.0.1", True), ("*.ci.internal", False),
                                              ("*", False), ("10.20.0.0/16", False), ("hooks-*.example", False)])
def test_a_wildcard_written_for_a_network_is_refused_at_start(pattern, refused):
    """10.20.* is matched as text: it would also allow the name 10.20.attacker.example."""
    if refused:
        with pytest.raises(ValueError, match="10.20.0.0/16"):
            Config(outbound_allow=(pattern,)).check()
    else:
        assert Config(outbound_allow=(pattern,)).check().outbound_allow == (pattern,)
