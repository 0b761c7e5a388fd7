"""Shared fixtures: an in-process fake on a virtual clock, with callback delivery recorded."""

from __future__ import annotations

import threading

import pytest

from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import DEFAULT_API_KEY, Config
from mock_server.delivery import Attempt

KEY = DEFAULT_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}


def body(**overrides) -> dict:
    """A valid non-custom request; override or drop (value ...) fields."""
    b = {
        "uploadUrl": "https://storage.example.com/upload",
        "prompt": "A calm and relaxing piano track",
        "customMode": False,
        "instrumental": False,
        "model": "V3_5",
        "callBackUrl": "https://api.example.com/callback",
    }
    b.update(overrides)
    return {k: v for k, v in b.items() if v is not ...}


def custom_body(**overrides) -> dict:
    """A valid custom-mode request with lyrics."""
    return body(customMode=True, style="Classical", title="Peaceful Piano", prompt="[Verse] la la", **overrides)


class RecordingDelivery:
    """Stands in for HTTP delivery: records every callback, answers with `status` (or a list)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.answers: list = []  # consumed first: int status or str error
        self.default = 200
        self.lock = threading.Lock()

    def __call__(self, url, data, headers):
        import json

        with self.lock:
            self.calls.append({"url": url, "body": json.loads(data), "headers": headers})
            answer = self.answers.pop(0) if self.answers else self.default
        if isinstance(answer, str):
            return Attempt(None, answer, 0.001)
        return Attempt(answer, None, 0.001)

    def stages(self, task_id=None):
        return [c["body"]["data"]["callbackType"] for c in self.calls
                if task_id is None or c["body"]["data"]["task_id"] == task_id]


@pytest.fixture
def config() -> Config:
    return Config(clock="virtual")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1_750_000_000.0)


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
def app(config, clock, delivery):
    app = create_app(config, clock=clock, deliver=delivery)
    yield app
    app.extensions["kie_mock"].scheduler.stop()


@pytest.fixture
def service(app):
    return app.extensions["kie_mock"]


@pytest.fixture
def client(app):
    return app.test_client()


def submit(client, payload=None, headers=None, **kw):
    """POST upload-cover; returns (http status, envelope)."""
    h = dict(AUTH)
    h.update(headers or {})
    r = client.post("/api/v1/generate/upload-cover", json=body() if payload is None else payload, headers=h, **kw)
    return r.status_code, r.get_json()


@pytest.fixture(scope="module")
def lenient_client():
    """One fake per test module with no rate limit and a huge balance: for many verdicts in a row."""
    cfg = Config(clock="virtual", rate_limit=0, api_keys={KEY: 10**12})
    app = create_app(cfg, clock=VirtualClock(start=1_750_000_000.0), deliver=RecordingDelivery())
    yield app.test_client()
    app.extensions["kie_mock"].scheduler.stop()


# -- the processes of a `kie-mock serve` ---------------------------------------------------------------
def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def descendant_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        out += kids
        todo += kids
    return out


def named_pids(pid: int, name: str) -> list[int]:
    """The processes under `pid` with this name (server.WORKER_NAME, server.SCHEDULER_NAME)."""
    out = []
    for p in descendant_pids(pid):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == name:
                    out.append(p)
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
