"""Two workers of one `kie-mock serve`, and two instances sharing one Redis, behave as one fake.

Real subprocess servers on loopback ports, a real HTTP callback receiver (http.server in a
thread). No timing assertions: everything waits by polling, with generous deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3

from conftest import AUTH, alive, body, child_pids, descendant_pids, named_pids

ROOT = Path(__file__).resolve().parents[1]
COVER = "/api/v1/generate/upload-cover"
RECORD = "/api/v1/generate/record-info"
CREDIT = "/api/v1/chat/credit"
HTTP = urllib3.PoolManager(maxsize=64, retries=False, timeout=urllib3.Timeout(total=30))


# -- a real server in a subprocess ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, base: str, output: list[str]):
        self.proc, self.base, self.output = proc, base, output

    def kill(self) -> None:
        """SIGKILL the whole server (the parent and its worker processes)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@contextmanager
def serve(*args: str, env: dict | None = None, timeout: float = 60.0):
    """`kie-mock serve --port P ARGS` in its own process group; yields a Server once it answers HTTP."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "serve", "--port", str(port), *args],
                            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    output: list[str] = []
    threading.Thread(target=lambda: [output.append(line) for line in proc.stdout], daemon=True).start()
    server = Server(proc, f"http://127.0.0.1:{port}", output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"kie-mock serve exited {proc.returncode}: {''.join(output)}")
            try:
                if HTTP.request("GET", server.base + "/_mock/health", timeout=2).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"kie-mock serve did not answer in {timeout} s: {''.join(output)}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


# -- a real callback receiver ----------------------------------------------------------------------------------
class Receiver:
    """Records every callback POSTed to it: (task_id, callbackType, body), in arrival order."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with receiver.lock:
                    receiver.calls.append((data["data"]["task_id"], data["data"]["callbackType"], data))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stages(self, task_id: str) -> list[str]:
        with self.lock:
            return [stage for tid, stage, _ in self.calls if tid == task_id]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# -- helpers ------------------------------------------------------------------------------------------------------
def post_cover(base: str, payload: dict) -> tuple[int, dict]:
    r = HTTP.request("POST", base + COVER, body=json.dumps(payload).encode(),
                     headers={**AUTH, "Content-Type": "application/json"})
    return r.status, json.loads(r.data)


def get_json(base: str, path: str) -> dict:
    r = HTTP.request("GET", base + path, headers=AUTH)
    return json.loads(r.data)


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def redis_url() -> str:
    url = os.environ.get("KIE_MOCK_TEST_REDIS_URL")
    if not url:
        msg = ("KIE_MOCK_TEST_REDIS_URL is not set: two instances on one Redis need a real redis-server "
               "(`source .ci/services.sh` installs and starts one)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return f"{url}{'&' if '?' in url else '?'}prefix=kie-mock-workers:{uuid.uuid4().hex[:12]}:"


FAST = {"KIE_MOCK_STAGE_DELAYS": "0.2,0.4,0.6", "KIE_MOCK_RETRY_DELAYS": "0.2,0.2,0.2"}


@contextmanager
def deployment(kind: str, tmp_path, env: dict | None = None):
    """Yields the base URLs to spread requests over: one server with two workers, or two
    single-worker instances on one shared store."""
    env = {**FAST, **(env or {})}
    with ExitStack() as stack:
        if kind == "two-workers":
            server = stack.enter_context(serve("--workers", "2", "--store", f"sqlite:{tmp_path / 'kie.sqlite'}",
                                               env=env))
            yield [server.base]
        elif kind == "two-instances-redis":
            url = redis_url()
            stack.callback(_reset_redis, url)  # runs last, after both servers stopped
            yield [stack.enter_context(serve("--store", url, env=env)).base for _ in range(2)]
        elif kind == "two-instances-sqlite":
            store = f"sqlite:{tmp_path / 'kie.sqlite'}"
            yield [stack.enter_context(serve("--store", store, env=env)).base for _ in range(2)]
        else:
            raise AssertionError(kind)


def _reset_redis(url: str) -> None:
    from mock_server.stores import open_store

    s = open_store(url)
    s.reset()
    s.close()


KINDS = ["two-workers", "two-instances-redis", "two-instances-sqlite"]


# -- the tests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_lifecycle_callbacks_in_order_exactly_once(kind, tmp_path, receiver):
    with deployment(kind, tmp_path) as bases:
        task_ids = []
        for i in range(8):  # alternate between the instances (and, for workers, whichever accepts)
            status, env = post_cover(bases[i % len(bases)], body(callBackUrl=receiver.url))
            assert (status, env["code"]) == (200, 200), env
            task_ids.append(env["data"]["taskId"])

        for tid in task_ids:
            wait_for(f"the complete callback of {tid}", lambda: "complete" in receiver.stages(tid))
            for base in bases:  # every instance sees the same task
                info = get_json(base, f"{RECORD}?taskId={tid}")
                assert (info["code"], info["data"]["status"]) == (200, "SUCCESS"), info
            # No job left for the task: nothing more can be sent (exactly-once is final).
            wait_for(f"no pending job for {tid}",
                     lambda: get_json(bases[0], f"/_mock/tasks/{tid}")["data"]["jobs"] == [])

        for tid in task_ids:
            assert receiver.stages(tid) == ["text", "first", "complete"], (tid, receiver.stages(tid))
        attempts = get_json(bases[-1], "/_mock/callbacks?limit=1000")["data"]
        mine = [a for a in attempts if a["task_id"] in task_ids]
        assert len(mine) == 3 * len(task_ids) and all(a["ok"] for a in mine)


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_exact_across_workers_and_instances(kind, tmp_path):
    # The default limit (20 per window); a window of an hour so a slow machine cannot let a
    # slot free up while the 30 requests are in flight.
    with deployment(kind, tmp_path, env={"KIE_MOCK_RATE_WINDOW": "3600"}) as bases:
        start = threading.Barrier(30)
        results: queue.Queue = queue.Queue()

        def one(i):
            start.wait(30)
            results.put(post_cover(bases[i % len(bases)], body(callBackUrl="http://127.0.0.1:9/cb")))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        got = [results.get_nowait() for _ in range(results.qsize())]
        assert len(got) == 30
        assert sorted((status, env["code"]) for status, env in got) == [(200, 200)] * 20 + [(429, 429)] * 10
        for base in bases:  # one balance, charged exactly 20 times
            assert get_json(base, CREDIT)["data"] == 1000 - 20 * 12


def _advance(base: str, seconds: float) -> float:
    r = HTTP.request("POST", base + "/_mock/clock/advance", body=json.dumps({"seconds": seconds}).encode(),
                     headers={"Content-Type": "application/json"})
    env = json.loads(r.data)
    assert env["code"] == 200, env
    return env["data"]["now"]


@pytest.mark.parametrize("kind", KINDS)
def test_virtual_clocks_of_workers_and_instances_share_one_time(kind, tmp_path, receiver):
    """Each instance used to keep a clock of its own: advancing through a load balancer moved one,
    record-info then differed by instance, and the rate window ran on two times (two workers were
    refused a virtual clock for that). The time is now kept in the store: a process that starts
    takes it, one that advances puts it there, and the others catch up on their next request."""
    url = redis_url() if kind == "two-instances-redis" else f"sqlite:{tmp_path / 'kie.sqlite'}"
    env = {"KIE_MOCK_STAGE_DELAYS": "2,5,8", "KIE_MOCK_RATE_LIMIT": "2", "KIE_MOCK_RATE_WINDOW": "10",
           "KIE_MOCK_RECORD_INFO_PER_SECOND": "0"}
    with ExitStack() as stack:
        if kind == "two-instances-redis":
            stack.callback(_reset_redis, url)
        if kind == "two-workers":  # whichever worker takes each request
            a = b = stack.enter_context(serve("--store", url, "--clock", "virtual", "--workers", "2", env=env)).base
        else:
            a = stack.enter_context(serve("--store", url, "--clock", "virtual", env=env)).base
            time.sleep(1.1)  # the second starts later: on its own it would start a second ahead
            b = stack.enter_context(serve("--store", url, "--clock", "virtual", env=env)).base
        def every_process(expected: float) -> None:
            """Ask on new connections until two processes (workers or instances) answered."""
            pids = set()
            for i in range(200):
                r = HTTP.request("GET", (a, b)[i % 2] + "/_mock/health", headers={"Connection": "close"})
                data = json.loads(r.data)["data"]
                assert data["now"] == expected, data
                pids.add(data["pid"])
                if len(pids) == 2:
                    return
            raise AssertionError(f"only {pids} answered")

        t0 = get_json(a, "/_mock/clock")["data"]["now"]
        every_process(t0)

        status, env_ = post_cover(b, body(callBackUrl=receiver.url))
        task_id = env_["data"]["taskId"]
        assert _advance(a, 8) == t0 + 8  # a runs what fell due: b's task's stages and callbacks
        assert receiver.stages(task_id) == ["text", "first", "complete"]
        every_process(t0 + 8)
        for base in (a, b) * 5:
            assert get_json(base, f"{RECORD}?taskId={task_id}")["data"]["status"] == "SUCCESS"

        # one rate window on one time: 2 covers per 10 s, counted on both instances
        _advance(a, 10)  # the first cover leaves the window
        assert [post_cover(x, body(callBackUrl="http://127.0.0.1:9/cb"))[0] for x in (a, b, b)] == [200, 200, 429]
        _advance(b, 9.99)
        assert post_cover(a, body(callBackUrl="http://127.0.0.1:9/cb"))[0] == 429  # a is at b's time, not its own
        _advance(b, 0.01)
        assert post_cover(a, body(callBackUrl="http://127.0.0.1:9/cb"))[0] == 200

        HTTP.request("POST", b + "/_mock/reset")  # the clock is not moved back, and a newcomer takes it
        c = stack.enter_context(serve("--store", url, "--clock", "virtual", env=env)).base
        assert get_json(c, "/_mock/clock")["data"]["now"] == t0 + 28


def test_workers_need_a_shared_store():
    for store in ("memory", "sqlite::memory:"):
        r = subprocess.run([sys.executable, "-m", "mock_server", "serve", "--workers", "2", "--store", store],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "needs a store the worker processes share" in r.stderr and "--store sqlite:PATH" in r.stderr


def test_default_store_is_a_fresh_sqlite_file_removed_at_exit(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    with serve("--workers", "2", env=env) as server:
        assert get_json(server.base, CREDIT)["data"] == 1000
        banner = wait_for("the banner", lambda: next((l for l in server.output if "listening on" in l), None))
        store = re.search(r"store: sqlite:(\S+);", banner).group(1)
        assert Path(store).exists() and Path(store).is_relative_to(tmp_path)
        status, env_ = post_cover(server.base, body(callBackUrl="http://127.0.0.1:9/cb"))
        assert env_["code"] == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    assert not Path(store).parent.exists()


def test_a_worker_freezes_its_long_lived_objects_and_again_after_a_reset():
    """A worker's app, and the memory store's containers (again after a reset, which replaces
    them), are out of the cyclic collector's full walks (mock_server/heap.py). In a child
    process: freezing is for the whole interpreter."""
    script = r'''
import base64, gc, json, os, pickle
from mock_server import server
from mock_server.config import Config
os.environ[server.ENV_CONFIG] = base64.b64encode(pickle.dumps(Config(store="memory"))).decode()
app = server.worker_app()
svc = app.extensions["kie_mock"]
def walked(obj):
    return any(o is obj for o in gc.get_objects())
out = {"frozen": gc.get_freeze_count() > 0, "heap_walked": walked(svc.store._heap)}
svc.scheduler.stop()
svc.reset()
out["after_reset_walked"] = walked(svc.store._heap)
print(json.dumps(out))
'''
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout.strip().splitlines()[-1]) == {"frozen": True, "heap_walked": False,
                                                                 "after_reset_walked": False}


# -- the scheduler process ----------------------------------------------------------------------------------
def _cover_called_back(base: str, receiver) -> str:
    status, env = post_cover(base, body(callBackUrl=receiver.url))
    assert (status, env["code"]) == (200, 200), env
    tid = env["data"]["taskId"]
    wait_for(f"the callbacks of {tid}", lambda: receiver.stages(tid) == ["text", "first", "complete"])
    return tid


def test_the_scheduler_process_makes_the_callbacks_and_one_that_dies_is_replaced(tmp_path, receiver):
    """On a shared store the callbacks come from a process of their own, not from the HTTP
    worker: while it is stopped (SIGSTOP) none arrives, however long they are overdue; it is
    replaced when it dies, and the replacement delivers what fell due meanwhile."""
    from mock_server import server as serve_mod

    with serve("--store", f"sqlite:{tmp_path / 'kie.sqlite'}", env=FAST) as server:
        banner = wait_for("the banner", lambda: next((l for l in server.output if "listening on" in l), None))
        assert "callbacks: a process of their own" in banner
        assert len(named_pids(server.proc.pid, serve_mod.WORKER_NAME)) == 1
        (sched,) = wait_for("the scheduler process", lambda: named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME))
        first = _cover_called_back(server.base, receiver)
        # Its last writes done (stopped inside a write, it would hold the store's lock):
        wait_for("no job left", lambda: get_json(server.base, f"/_mock/tasks/{first}")["data"]["jobs"] == [])
        wait_for("the attempts journaled",
                 lambda: len(get_json(server.base, f"/_mock/callbacks?task_id={first}")["data"]) == 3)

        os.kill(sched, signal.SIGSTOP)
        try:
            status, env = post_cover(server.base, body(callBackUrl=receiver.url))
            tid = env["data"]["taskId"]
            wait_for("the text stage to be overdue by a second",
                     lambda: time.time() > get_json(server.base, f"/_mock/tasks/{tid}")["data"]["plan"][0]["at"] + 1)
            assert receiver.stages(tid) == []  # the worker did not deliver it
            assert get_json(server.base, f"{RECORD}?taskId={tid}")["data"]["status"] == "PENDING"
        finally:
            os.kill(sched, signal.SIGKILL)
            os.kill(sched, signal.SIGCONT)
        (again,) = wait_for("another scheduler process",
                            lambda: [p for p in named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME) if p != sched])
        wait_for(f"the callbacks of {tid}", lambda: receiver.stages(tid) == ["text", "first", "complete"])
        _cover_called_back(server.base, receiver)
        assert any("scheduler process" in line and "died" in line for line in server.output)


def test_a_one_process_store_keeps_the_callbacks_in_the_worker(receiver):
    from mock_server import server as serve_mod

    with serve("--store", "memory", env=FAST) as server:
        banner = wait_for("the banner", lambda: next((l for l in server.output if "listening on" in l), None))
        assert "callbacks: the workers" in banner
        assert named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME) == []
        _cover_called_back(server.base, receiver)


def test_granian_runs_the_scheduler_process_too_and_stops_it_cleanly(tmp_path, receiver):
    """granian forks its own workers: the scheduler process hangs off a supervising child,
    which the server stops (SIGTERM, once granian has returned) before it exits itself."""
    from mock_server import server as serve_mod

    with serve("--store", f"sqlite:{tmp_path / 'kie.sqlite'}", env={**FAST, "KIE_MOCK_HTTP_SERVER": "granian"}) as server:
        (sched,) = wait_for("the scheduler process", lambda: named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME))
        _cover_called_back(server.base, receiver)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert not alive(sched)
        wait_for("the output", lambda: any(f"scheduler process {sched} stopped" in line for line in server.output),
                 timeout=5)


def test_granian_stops_when_its_scheduler_process_is_gone(tmp_path):
    """Rather than accept covers whose callbacks never come: the scheduler's supervisor killed
    (it also gives up after 5 quick deaths in a row), the server stops, with exit code 1."""
    from mock_server import server as serve_mod

    with serve("--store", f"sqlite:{tmp_path / 'kie.sqlite'}", env={**FAST, "KIE_MOCK_HTTP_SERVER": "granian"}) as server:
        (sched,) = wait_for("the scheduler process", lambda: named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME))
        with open(f"/proc/{sched}/stat") as f:
            helper = int(f.read().rsplit(") ", 1)[1].split()[1])
        assert helper != server.proc.pid
        os.kill(helper, signal.SIGKILL)
        assert server.proc.wait(30) == 1
        assert any("the scheduler process is gone" in line for line in server.output), server.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_granian_workers_are_named_and_die_with_a_server_killed_with_sigkill(tmp_path, workers):
    """granian forks its workers itself: they must not outlive `serve` (they went on answering
    on the port, and a restart found it taken)."""
    from mock_server import server as serve_mod

    with serve("--store", f"sqlite:{tmp_path / 'kie.sqlite'}", "--workers", workers,
               env={**FAST, "KIE_MOCK_HTTP_SERVER": "granian"}) as server:
        http = wait_for("the named workers", lambda: named_pids(server.proc.pid, serve_mod.WORKER_NAME)
                        if len(named_pids(server.proc.pid, serve_mod.WORKER_NAME)) == int(workers) else None)
        everyone = descendant_pids(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        wait_for("every process of the server gone", lambda: not any(alive(p) for p in everyone), timeout=10)
        assert http


def test_a_scheduler_that_does_not_claim_runs_its_rounds_and_leaves_the_jobs():
    """`claims=False` (an HTTP worker next to a scheduler process): its rounds run (the journal
    rides on them) but it never takes a due job; a claiming scheduler on the same store does."""
    from conftest import RecordingDelivery

    from mock_server.app import create_app
    from mock_server.config import Config
    from mock_server.scheduler import Scheduler

    cfg = Config(store="memory", stage_delays=(0.0, 0.0, 0.0))
    delivery = RecordingDelivery()
    app = create_app(cfg, deliver=delivery, claims=False)
    svc = app.extensions["kie_mock"]
    rounds = []
    svc.scheduler.each_round.append(lambda: rounds.append(1))
    try:
        r = app.test_client().post(COVER, json=body(callBackUrl="http://127.0.0.1:9/cb"), headers=AUTH)
        tid = r.get_json()["data"]["taskId"]
        wait_for("ten rounds", lambda: len(rounds) >= 10)
        assert delivery.calls == []
        (job,) = svc.store.list_jobs(tid)
        assert job["owner"] is None and job["due"] <= time.time()
    finally:
        svc.scheduler.stop()
    worker = Scheduler(svc.store, svc.clock, cfg, deliver=delivery)
    worker.start()
    try:
        wait_for("the callbacks", lambda: delivery.stages(tid) == ["text", "first", "complete"])
    finally:
        worker.stop()


def test_two_scheduler_processes_share_the_callbacks_each_made_once(tmp_path, receiver):
    from mock_server import server as serve_mod

    with serve("--store", f"sqlite:{tmp_path / 'kie.sqlite'}", "--schedulers", "2", env=FAST) as server:
        banner = wait_for("the banner", lambda: next((l for l in server.output if "listening on" in l), None))
        assert "callbacks: 2 processes of their own" in banner
        assert len(wait_for("two scheduler processes",
                            lambda: (lambda p: p if len(p) == 2 else None)(
                                named_pids(server.proc.pid, serve_mod.SCHEDULER_NAME)))) == 2
        tids = []
        for _ in range(12):
            status, env = post_cover(server.base, body(callBackUrl=receiver.url))
            tids.append(env["data"]["taskId"])
        for tid in tids:
            wait_for(f"the callbacks of {tid}", lambda: len(receiver.stages(tid)) >= 3)
            wait_for(f"no pending job for {tid}",
                     lambda: get_json(server.base, f"/_mock/tasks/{tid}")["data"]["jobs"] == [])
        assert all(receiver.stages(tid) == ["text", "first", "complete"] for tid in tids)
        attempts = get_json(server.base, "/_mock/callbacks?limit=1000")["data"]
        assert len([a for a in attempts if a["task_id"] in tids]) == 3 * len(tids)


@pytest.mark.parametrize("args, message", [
    (["--schedulers", "0"], "--schedulers must be at least 1"),
    (["--schedulers", "2", "--store", "memory"], "--schedulers runs callbacks in processes of their own"),
])
def test_schedulers_refused_where_they_cannot_work(args, message):
    r = subprocess.run([sys.executable, "-m", "mock_server", "serve", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr


SUPERVISED = """
import os, signal, sys, time
from mock_server import server

def failing():
    raise RuntimeError("cannot start")

def sleeping():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, server._SIGNALS)  # as the real ones do: SIGTERM stops it
    time.sleep(600)

def stopping():  # as a real worker or scheduler: takes SIGTERM, finishes, exits 0
    done = []
    signal.signal(signal.SIGTERM, lambda *a: done.append(1))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, server._SIGNALS)
    while not done:
        time.sleep(0.01)

def killed_as_it_starts():  # the OOM killer, say
    os.kill(os.getpid(), signal.SIGKILL)

server.run_scheduler = {"failing": failing, "sleeping": sleeping, "stopping": stopping,
                        "killed": killed_as_it_starts}[sys.argv[1]]
sys.exit(server._supervise(None, 0, 1))
"""


def test_a_process_that_cannot_start_stops_the_server_after_five_tries():
    r = subprocess.run([sys.executable, "-c", SUPERVISED, "failing"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("RuntimeError: cannot start") == 5
    assert "5 scheduler processes in a row died as they started; stopping" in r.stderr


@pytest.mark.parametrize("target, sig", [("sleeping", signal.SIGKILL), ("stopping", signal.SIGTERM)])
def test_processes_stopped_from_outside_are_replaced_however_often(target, sig):
    """Five SIGKILLs or SIGTERMs in a row within seconds of each start (an operator, a chaos test,
    the OOM killer) used to count as "died as they started", and the whole server stopped."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED, target], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(7):
            (child,) = wait_for("the scheduler process", lambda: child_pids(proc.pid) or None)
            time.sleep(0.05)  # its handler in place
            os.kill(child, sig)
            wait_for("another one", lambda: (child_pids(proc.pid) or [child])[0] != child)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr.read().count("died; starting another") == 7
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_process_killed_each_time_it_starts_is_started_again_less_and_less_often():
    """Not counted as failing (it is killed from outside), it was started again at once, some 150
    times a second."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED, "killed"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    restarts = proc.stderr.read().count("died; starting another")
    assert 5 <= restarts <= 12, restarts  # 0.05, 0.1, ... 1.6, 2 s between them
