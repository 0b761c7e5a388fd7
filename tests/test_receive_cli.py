"""`kie-mock receive`: the quickstart's callback receiver prints what arrives and can refuse."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> int:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_receive_prints_each_callback_and_fails_the_first_n():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "receive", "--port", str(port), "--fail", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def text(task):
        return {"code": 200, "msg": "Text generation completed.",
                "data": {"callbackType": "text", "task_id": task, "data": []}}
    try:
        assert "receiving callbacks" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/callback"
        # --fail 5: task a's text callback refused 4 times in a row (the 4th is the fake's last try),
        # then one of task b's; the next one is accepted
        assert [_post(url, text(t)) for t in ("abc123",) * 4 + ("b", "b")] == [500] * 5 + [200]
        time.sleep(0.2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.count("text     task abc123  code 200") == 4
    for n in (1, 2, 3):
        assert f"failure {n} in a row of this callback: the fake retries it" in out
    assert out.count("failure 4 in a row of this callback: by default the fake now gives up") == 1
    assert out.count("failure 1 in a row") == 2  # task b counts on its own
    assert out.count("answered HTTP 500") == 5


def test_receive_reports_a_busy_port_as_a_usage_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = subprocess.run([sys.executable, "-m", "mock_server", "receive", "--port", str(s.getsockname()[1])],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot listen" in r.stderr


def test_callbacks_arriving_together_are_printed_one_whole_block_each():
    """print() writes a line and its newline apart: threads interleaved them ("...completed.'04:07:16  text")."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "receive", "--port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "receiving callbacks" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/callback"
        payloads = [{"code": 200, "msg": "Text generation completed.",
                     "data": {"callbackType": "text", "task_id": f"t{i:03d}", "data": []}} for i in range(200)]
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda p: _post(url, p), payloads)) == {200}
        time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    heads = [line for line in out.splitlines() if "task t" in line]
    assert len(heads) == 200 and all(re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?\s+text\s+task t\d{3}\s+code 200.*", h)
                                     for h in heads), [h for h in heads][:5]
    assert out.count('"callbackType": "text"') == 200
