"""A store the fake cannot use (Redis stopped, an SQLite file it cannot read or write): the API
says so in its 500 instead of calling it a bug of the fake, /_mock/health answers 503 so a load
balancer can take the instance out, the log says it once every few seconds instead of a line per
request, the scheduler backs off instead of retrying 50 times a second, and all of it comes back
when the store does."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import time

import pytest
import redis

from conftest import AUTH, KEY, body
from mock_server.app import create_app
from mock_server.config import Config
from mock_server.stores import OutageLog, StoreLocked, unavailable
from test_stores import IN_CI, need_redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own, so it can be stopped and started again on its port."""

    def __init__(self):
        exe = shutil.which("redis-server")
        if exe is None:
            need_redis()  # fails in CI, skips elsewhere, with the way to get one
            pytest.skip("redis-server is not on PATH")
        self.exe, self.port, self.proc = exe, _free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def test_redis_down_is_said_as_such_and_health_answers_503_until_it_is_back(private_redis, capfd):
    app = create_app(Config(store=private_redis.url, clock="virtual"), start_scheduler=False)
    client = app.test_client()
    try:
        assert client.get("/_mock/health").status_code == 200
        private_redis.stop()
        for _ in range(5):
            cover = client.post("/api/v1/generate/upload-cover", json=body(), headers=AUTH).get_json()
            assert cover["code"] == 500 and cover["data"] is None
            assert cover["msg"].startswith("Internal Error: the fake's store is unavailable (ConnectionError")
            # answered without the store (no key): says nothing of whether it is back
            assert client.get("/api/v1/chat/credit").get_json()["code"] == 401
        health = client.get("/_mock/health")
        assert health.status_code == 503 and health.get_json()["code"] == 503
        assert "store is unavailable (ConnectionError" in health.get_json()["msg"]
        err = capfd.readouterr().err
        assert "Traceback" not in err and err.count("the store is unavailable") == 1  # once, not per request
        assert "answers again" not in err

        private_redis.start()  # back, and empty (no persistence): the configured keys are seeded again
        assert client.get("/_mock/health").status_code == 200
        assert client.get("/api/v1/chat/credit", headers=AUTH).get_json() == {"code": 200, "msg": "success",
                                                                              "data": 1000}
        err = capfd.readouterr().err
        assert "the store answers again" in err and "the configured keys are seeded again" in err
        client.delete("/_mock/accounts/" + KEY)  # a key deleted on purpose stays unknown
        assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["code"] == 401
        assert "seeded again" not in capfd.readouterr().err
    finally:
        app.extensions["kie_mock"].scheduler.stop()


def test_the_scheduler_backs_off_while_the_store_is_down(capfd):
    app = create_app(Config(store="memory", clock="real"), start_scheduler=False)
    svc = app.extensions["kie_mock"]
    calls = []

    def down(*args, **kwargs):
        calls.append(time.monotonic())
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    svc.store.claim_due = down
    svc.scheduler.start()
    try:
        time.sleep(1.6)
    finally:
        svc.scheduler.stop()
    # poll interval 0.05 s: about 32 rounds without backing off; 0.1, 0.2, 0.4, 0.8 s with it
    assert 2 <= len(calls) <= 6, len(calls)
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("callbacks: the store is unavailable") == 1


@pytest.mark.parametrize("exc, why", [
    (redis.ConnectionError("Connection refused"), "ConnectionError: Connection refused"),
    (redis.TimeoutError("Timeout reading from socket"), "TimeoutError: Timeout reading from socket"),
    (redis.BusyLoadingError("Redis is loading the dataset in memory"), "BusyLoadingError"),
    (sqlite3.OperationalError("disk I/O error"), "OperationalError: disk I/O error"),
    (sqlite3.OperationalError("database or disk is full"), "database or disk is full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "readonly database"),
    (sqlite3.DatabaseError("database disk image is malformed"), "malformed"),
    (StoreLocked("the store's write lock stayed held for 30 s"), "StoreLocked: the store's write lock"),
])
def test_what_counts_as_a_store_that_cannot_be_used(exc, why):
    assert why in unavailable(exc)


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("no such column: x"),  # a statement of ours that is wrong: a bug
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    KeyError("taskId"), ValueError("x"),
])
def test_a_bug_is_not_taken_for_an_outage(exc):
    assert unavailable(exc) is None


def test_the_outage_log_says_it_once_per_period_with_the_count_then_once_when_it_is_over(capfd, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    log = OutageLog("API requests", every=10)
    for _ in range(50):
        log.failed("ConnectionError: refused")
    now[0] += 9.99
    log.failed("ConnectionError: refused")
    assert capfd.readouterr().err.splitlines() == [
        "kie-mock: API requests: the store is unavailable: ConnectionError: refused"]
    now[0] += 0.01
    log.failed("ConnectionError: refused")
    log.recovered()
    log.recovered()
    assert capfd.readouterr().err.splitlines() == [
        "kie-mock: API requests: the store is unavailable (51 times in the last 10 s): ConnectionError: refused",
        "kie-mock: API requests: the store answers again"]


@pytest.mark.parametrize("content", [b"not a database at all, " * 300, bytes(range(256)) * 40])
def test_serve_on_a_file_that_is_no_database_says_so_in_one_line(tmp_path, content):
    """It used to stop with a 39-line traceback."""
    import sys

    path = tmp_path / "state.sqlite"
    path.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "mock_server", "serve", "--port", "0", "--store", f"sqlite:{path}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"kie-mock serve: cannot use the store sqlite:{path}: DatabaseError: file is not a database"


def test_a_store_that_fails_and_works_by_turns_is_said_once_a_period(capfd, monkeypatch):
    """A full disk: reads work, writes fail. Each read ended the outage and the next write began
    another, a pair of lines per request."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    log = OutageLog("API requests", every=10)
    for _ in range(100):
        log.failed("OperationalError: database or disk is full")
        log.recovered()
        now[0] += 0.05  # 5 s in all
    lines = capfd.readouterr().err.splitlines()
    assert lines == ["kie-mock: API requests: the store is unavailable: OperationalError: database or disk is full",
                     "kie-mock: API requests: the store answers again"]


def test_health_answers_503_for_a_store_that_reads_but_cannot_write(monkeypatch):
    app = create_app(Config(store="memory", clock="virtual"), start_scheduler=False)
    client = app.test_client()

    def full(*args):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(app.extensions["kie_mock"].store, "log", full)
    health = client.get("/_mock/health")
    assert health.status_code == 503 and "database or disk is full" in health.get_json()["msg"]


def test_the_last_line_of_a_flapping_store_is_true(capfd, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    log = OutageLog("API requests", every=10)
    for t, call in ((0, log.failed), (1, log.recovered), (10.5, log.failed), (10.6, log.recovered)):
        now[0] = t
        call("OperationalError: disk I/O error") if call == log.failed else call()
    assert capfd.readouterr().err.splitlines() == [
        "kie-mock: API requests: the store is unavailable: OperationalError: disk I/O error",
        "kie-mock: API requests: the store answers again",
        "kie-mock: API requests: the store is unavailable (1 times in the last 10 s): OperationalError: disk I/O error",
        "kie-mock: API requests: the store answers again"]


def test_the_scheduler_says_when_the_store_works_again_after_a_job_failed(capfd, monkeypatch):
    from conftest import RecordingDelivery
    from mock_server.clock import VirtualClock

    app = create_app(Config(store="memory", clock="virtual"), clock=VirtualClock(start=1e9),
                     deliver=RecordingDelivery())
    svc = app.extensions["kie_mock"]
    client = app.test_client()
    real = svc.store.get_task
    fail = [True]

    def blip(task_id):
        if fail and fail.pop():
            raise sqlite3.OperationalError("disk I/O error")
        return real(task_id)
    monkeypatch.setattr(svc.store, "get_task", blip)
    client.post("/api/v1/generate/upload-cover", json=body(), headers=AUTH)
    svc.clock.advance(3)  # the text job fails, and is kept
    assert "callbacks: the store is unavailable" in capfd.readouterr().err
    svc.clock.advance(svc.scheduler.lease)  # claimed again, and works
    assert "callbacks: the store answers again" in capfd.readouterr().err
    svc.scheduler.stop()
