"""Running the app: `kie-mock serve [--workers N]` on a production HTTP server.

The server is chosen by measurement (README "Benchmarks", bench/README.md):

- **builtin** (httpd.py; the default, for every store): the fake's own
  HTTP/1.1 server, asyncio protocols on uvloop with httptools' parser, the three API endpoints
  run on each worker's event loop (an injected latency is a timer there), anything that may
  wait (a store lock held elsewhere, the uploadUrl check, the control API, files) in a thread
  pool (onloop.py). Measured on 2 cores with wrk
  sharing them, POST upload-cover, default SQLite store, one worker: 14,000-15,300 req/s,
  against 9,400-10,400 on granian's RSGI interface with the same app code (a constant answer:
  89,700 req/s against 37,400). Workers are forked by this process after it binds the socket,
  and share it. With a Redis store the API requests run in the pool, where round trips
  overlap: 1,800 covers/s with one worker.
- **granian** (Rust): its WSGI interface (threads, in which Redis round trips overlap: 3,600
  covers/s, but a slow request body holds a thread, so a few slow clients stall the rest) or,
  with `KIE_MOCK_HTTP_INTERFACE=rsgi`, the same on-loop API as
  the built-in server (rsgi.py). `KIE_MOCK_HTTP_INTERFACE=wsgi|rsgi` overrides
  (`KIE_MOCK_HTTP_THREADS`: WSGI threads per worker, default 4).
- `KIE_MOCK_HTTP_SERVER=builtin|granian|gunicorn-gthread|gunicorn-sync|werkzeug` picks one
  (comparisons, or where a wheel is missing).

Workers are processes: each one builds its own app (and so its own store connections)
AFTER the fork, from the factory `worker_app`. With more than one worker the state must live
in a store the processes share (a sqlite file or redis); the shared store is seeded
(configured keys, the scenario file) once, by the parent, before any worker starts.

The due work (stage changes, callbacks, retries) runs, on a shared store with a real clock, in
a scheduler process of its own (`run_scheduler`; see `scheduler_process` for why), and the
HTTP workers never claim a job. With a one-process store or a virtual clock each worker's own
scheduler thread does it. Whoever runs it claims due jobs with a lease, so every callback
attempt is made by one process only, and a dead one's jobs are taken over when its lease runs
out (a new worker or scheduler process is started in its place; the built-in server's
processes die with it, however it dies).

Without --store, `serve` keeps its state in a fresh sqlite file in a temporary directory:
shared by the workers, on disk rather than in memory (memory stays flat under sustained
load), removed at a clean exit, left in place (and named in the banner) after a crash.
`--store sqlite:PATH` keeps state across restarts; `--store memory` keeps it in one process (as
fast on the accept path, faster on polling).
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

from . import heap
from .config import Config, mask_url, url_host
from .stores import networked, unavailable

ENV_CONFIG = "KIE_MOCK__WORKER_CONFIG"  # the parent's Config, for the workers (internal)
ENV_SCENARIO = "KIE_MOCK__WORKER_SCENARIO_FILE"
ENV_MULTIPROCESS = "KIE_MOCK__WORKER_MULTIPROCESS"
ENV_SERVE_PID = "KIE_MOCK__SERVE_PID"  # the `serve` process, which the workers it forks die with
ENV_CLAIMS = "KIE_MOCK__WORKER_CLAIMS"  # "0": the workers leave the due jobs to the scheduler process
SERVERS = ("builtin", "granian", "gunicorn-gthread", "gunicorn-sync", "werkzeug")
WORKER_STOP_TIMEOUT = 15.0  # seconds a worker gets to stop after SIGTERM (httpd.DRAIN_TIMEOUT + its scheduler)
RESPAWN_GIVE_UP = 5  # workers that die within RESPAWN_QUICK seconds of starting, in a row: stop serving
RESPAWN_QUICK = 2.0
RESPAWN_PAUSE_MAX = 2.0  # seconds the supervisor waits at most before starting a process again
WORKER_NAME, SCHEDULER_NAME = "kie-mock-http", "kie-mock-sched"  # process names (ps -o comm)
THREADS_PER_WORKER = 4  # WSGI threads per worker: measured best of 2/4/8 (CPU-bound work; more threads only add switching)


class ServeError(Exception):
    """A setting that cannot work (the message says why and what to do instead)."""


def shared_store(url: str) -> bool:
    return networked(url) or (
        url.startswith("sqlite:") and url[len("sqlite:"):] not in ("", ":memory:"))


def check(cfg: Config, workers: int) -> None:
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and not shared_store(cfg.store):
        raise ServeError(
            f"--workers {workers} needs a store the worker processes share, and {cfg.store!r} lives inside one "
            f"process (each worker would have its own tasks, credits and rate windows). Use --store "
            f"sqlite:PATH (the default for serve) or --store redis://HOST:PORT/DB, or --workers 1.")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _prepare_store(cfg: Config, scenario_file: str | None) -> dict:
    """Seed a shared store once, before the workers start (they then find the keys there).
    With a one-process store, check the scenario file on a throwaway one: a bad file stops
    `serve` with its sentence before any worker starts (instead of killing each worker).
    The scenario file's content ({} without one)."""
    from .service import Service

    if not shared_store(cfg.store):
        cfg = cfg.with_overrides(store="memory")
        if not scenario_file:
            return {}
    svc = Service(cfg)  # seeds the configured keys the store does not know yet
    try:
        if scenario_file:
            from .scenario_file import apply_file

            apply_file(svc, scenario_file)
    finally:
        svc.store.close()
    return svc.startup or {}


def worker_app():
    """The app of one worker process (the factory the WSGI server calls after forking)."""
    from .app import create_app

    serve_pid = int(os.environ.get(ENV_SERVE_PID) or 0)
    if serve_pid and os.getpid() != serve_pid:  # a worker granian or gunicorn forked: named, and it dies with serve
        _set_name(WORKER_NAME)
        _die_with(serve_pid)
    cfg: Config = pickle.loads(base64.b64decode(os.environ[ENV_CONFIG]))
    app = create_app(cfg, claims=os.environ.get(ENV_CLAIMS) != "0")
    scenario_file = os.environ.get(ENV_SCENARIO)
    if scenario_file:  # a shared store has it from the parent; a one-process store is this worker's own
        from .scenario_file import apply_file

        apply_file(app.extensions["kie_mock"], scenario_file, remember_only=shared_store(cfg.store))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.extensions["kie_mock"].after_reset.append(heap.settle)
    warm_up(app)
    heap.settle()  # what this process built so far lives as long as it does
    return app


def warm_up(app) -> None:
    """Read and compile now what the first requests would: the schemas, each branch's check,
    the modules a refusal's sentence and a Flask request import. Else a worker that met its
    first cover while its descriptors were all taken (idle connections) answered 500: it could
    not open the files."""
    import encodings.idna  # noqa: F401 (werkzeug imports it on its first request)

    from . import rules

    good = {"uploadUrl": "https://a.example/a.mp3", "customMode": False, "instrumental": False,
            "model": "V3_5", "prompt": "x", "callBackUrl": "https://a.example/cb"}
    for body in (good, {**good, "callBackUrl": "not a url", "styleWeight": 2}, {**good, "customMode": True},
                 {**good, "customMode": True, "instrumental": True}, {}):
        rules.check_upload_cover(body)
    with app.test_client() as client:
        client.get("/_mock/health")


def worker_rsgi_app():
    """The same app behind granian's RSGI interface (see rsgi.py)."""
    from .rsgi import RsgiApp

    app = worker_app()
    return RsgiApp(app.extensions["kie_mock"], app, multiprocess=os.environ.get(ENV_MULTIPROCESS) == "1")


def banner(cfg: Config, port: int, workers: int, server: str, schedulers: int = 0,
           scenario_keys: tuple = ()) -> str:
    from .config import DEFAULT_API_KEY, mask_key, mask_url

    # masked, as in every log and journal; the documented default key is public anyway
    keys = ", ".join(k if k == DEFAULT_API_KEY else mask_key(k) for k in dict.fromkeys([*cfg.api_keys, *scenario_keys]))
    due = ("a process of their own" if schedulers == 1 else f"{schedulers} processes of their own") \
        if schedulers else "the workers"
    stages = "instant" if cfg.instant else "/".join(f"{d * cfg.time_scale:g}" for d in cfg.stage_delays) + " s"
    extra = "; uploadUrl fetched (--source-check)" if cfg.source_check else ""
    host = url_host(cfg.host)
    return (f"kie-mock listening on http://{host}:{port}  (keys: {keys}; transport: {cfg.transport}; "
            f"clock: {cfg.clock}; stages: {stages}{extra}; store: {mask_url(cfg.store)}; server: {server}, "
            f"workers: {workers}; callbacks: {due})")


def _scenario_keys(scenario: dict) -> tuple:
    """The keys a scenario file's accounts add (for the banner), from its checked content."""
    return tuple(str(k) for k in scenario.get("accounts") or {})


def scheduler_process(cfg: Config, server: str) -> bool:
    """Whether stages and callbacks run in a scheduler process of their own (`run_scheduler`)
    rather than in the HTTP workers: with a store the processes share and a real clock, on the
    built-in server and granian. Why: in a worker, the scheduler's threads share one GIL with an
    event loop that load keeps busy, and callbacks fell behind by seconds (bench/lateness_http.py
    --load: p50 11-14 s late, half not arrived 8 s after the last fell due; in a process of
    their own all arrived, p50 0.9-1.9 ms, p99 17-48 ms late)."""
    return shared_store(cfg.store) and cfg.clock != "virtual" and server in ("builtin", "granian")


def run_scheduler() -> None:
    """The scheduler process: works the due jobs of the shared store (stage changes, callback
    deliveries, retries; leases as any worker) and serves no HTTP. Runs until SIGTERM or SIGINT
    (blocked by its parent, taken here), then stops its scheduler and closes its store."""
    from .service import Service

    _set_name(SCHEDULER_NAME)
    heap.limit_arenas()  # before its delivery threads start
    cfg: Config = pickle.loads(base64.b64decode(os.environ[ENV_CONFIG]))
    svc = Service(cfg)
    heap.settle()
    svc.scheduler.start()
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        svc.scheduler.stop()
        svc.store.close()
    print(f"kie-mock serve: scheduler process {os.getpid()} stopped", flush=True)


def default_store_dir() -> str:
    """Where `serve` keeps its state when no --store is given: a fresh directory per start."""
    return tempfile.mkdtemp(prefix="kie-mock-")


def run(cfg: Config, workers: int = 1, scenario_file: str | None = None, server: str | None = None,
        default_store: bool = False, schedulers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM. `default_store`: the user named no store, so use a fresh sqlite
    file in a temporary directory (shared by the workers, on disk rather than in memory) and
    remove it at a clean exit. After a crash it stays, and the banner names it."""
    tmpdir = None
    if default_store:
        tmpdir = default_store_dir()
        cfg = cfg.with_overrides(store=f"sqlite:{os.path.join(tmpdir, 'kie-mock.sqlite')}")
    try:
        return _run(cfg, workers, scenario_file, server, schedulers)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _raise_fd_limit() -> None:
    """Open files: the soft limit up to the hard one (often 1,024 of 1,048,576). Every connection
    holds a descriptor: at 1,024 a few hundred idle clients per worker locked everyone out."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ImportError, ValueError, OSError):  # not Unix, or not allowed: keep what there is
        pass


def _run(cfg: Config, workers: int, scenario_file: str | None, server: str | None, schedulers: int = 1) -> int:
    _raise_fd_limit()
    server = server or os.environ.get("KIE_MOCK_HTTP_SERVER") or default_server()
    try:
        if server not in SERVERS:
            raise ServeError(f"KIE_MOCK_HTTP_SERVER must be one of {', '.join(SERVERS)}, got {server!r}")
        check(cfg, workers)
        if schedulers < 1:
            raise ServeError(f"--schedulers must be at least 1, got {schedulers}")
        own_process = scheduler_process(cfg, server)
        if schedulers > 1 and not own_process:
            raise ServeError("--schedulers runs callbacks in processes of their own, which needs a shared store "
                             "(--store sqlite:PATH or redis://...), the real clock, and the built-in server or "
                             "granian")
        if os.environ.get("KIE_MOCK_HTTP_INTERFACE", "rsgi") not in ("rsgi", "wsgi"):
            raise ServeError(f"KIE_MOCK_HTTP_INTERFACE must be rsgi or wsgi, "
                             f"got {os.environ['KIE_MOCK_HTTP_INTERFACE']!r}")
        if server == "werkzeug" and workers > 1:
            raise ServeError("the werkzeug development server runs one process: use --workers 1")
    except ServeError as exc:
        print(f"kie-mock serve: {exc}", file=sys.stderr)
        return 2
    if cfg.port == 0:
        cfg = cfg.with_overrides(port=_free_port(cfg.host))
    try:
        scenario_keys = _scenario_keys(_prepare_store(cfg, scenario_file))
    except Exception as exc:  # a store it cannot use: one sentence, not a traceback
        reason = unavailable(exc)
        if reason is None:
            raise
        print(f"kie-mock serve: cannot use the store {mask_url(cfg.store)}: {reason}", file=sys.stderr)
        return 2
    os.environ[ENV_CONFIG] = base64.b64encode(pickle.dumps(cfg)).decode()
    os.environ[ENV_SERVE_PID] = str(os.getpid())
    if scenario_file:  # each worker remembers it (POST /_mock/reset comes back to it); one applies it
        os.environ[ENV_SCENARIO] = os.path.abspath(scenario_file)
    else:
        os.environ.pop(ENV_SCENARIO, None)
    schedulers = schedulers if own_process else 0
    os.environ[ENV_CLAIMS] = "0" if schedulers else "1"
    line = banner(cfg, cfg.port, workers, server, schedulers, scenario_keys)
    if server == "builtin":
        return _run_builtin(cfg, workers, line, schedulers)
    if server == "granian":
        return _run_granian(cfg, workers, line, schedulers)
    if server.startswith("gunicorn"):
        return _run_gunicorn(cfg, workers, line, server.split("-", 1)[1])
    return _run_werkzeug(cfg, line)


def default_server() -> str:
    """The built-in server (httpd.py) for every store. With Redis its API requests run in the
    worker's thread pool, where the round trips overlap. (granian's WSGI threads, used for Redis
    before, did 1.5x the covers a second but blocked a thread on each slow body: four clients
    that stopped halfway through their bodies held every other client off as long as they
    liked, and 128 idle connections held them off for 30 s.)"""
    return "builtin"


def worker_on_loop():
    """One worker's API on its event loop (httpd.py), built in the worker process."""
    from .onloop import OnLoop

    app = worker_app()
    return OnLoop(app.extensions["kie_mock"], app, multiprocess=os.environ.get(ENV_MULTIPROCESS) == "1")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def _run_builtin(cfg: Config, workers: int, line: str, schedulers: int) -> int:
    try:
        sock = _listen(cfg.host, cfg.port)
    except OSError as exc:
        print(f"kie-mock serve: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    os.environ[ENV_MULTIPROCESS] = "1" if workers > 1 else "0"
    print(line, flush=True)
    # One worker too runs in a process of its own: this one stays free to take signals (a second
    # SIGTERM or Ctrl-C while the worker drains ends it at once), to start a new worker should
    # it die, and to clean up (the default store's directory) however the worker ends.
    return _supervise(sock, workers, schedulers)


def _serve_http(sock: socket.socket):
    def serve() -> None:
        from . import httpd

        _set_name(WORKER_NAME)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        httpd.run_worker(sock, worker_on_loop)
    return serve


_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def _supervise(sock: socket.socket | None, workers: int, schedulers: int) -> int:
    """Fork `workers` processes serving on `sock` and `schedulers` scheduler processes;
    start a new one in place of one that dies; on SIGTERM or SIGINT stop them all (SIGTERM,
    then SIGKILL after WORKER_STOP_TIMEOUT)."""
    parent = os.getpid()
    signals = _SIGNALS
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # taken with sigwait below, never in a handler
    children: dict[int, tuple] = {}  # pid -> (start time, what it runs)

    def spawn(target) -> None:
        pid = os.fork()
        if pid:
            children[pid] = (time.monotonic(), target)
            return
        code = 0
        try:
            _die_with(parent)
            if target is run_scheduler and sock is not None:
                sock.close()  # it serves no HTTP
            target()
        except KeyboardInterrupt:  # Ctrl-C while it was starting
            pass
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            _exit(code)

    quick_deaths: dict[str, int] = {}  # per kind of process: failures in a row right after starting
    young_deaths: dict[str, int] = {}  # per kind of process: deaths in a row right after starting, any cause
    code = 0
    try:
        for _ in range(schedulers):
            spawn(run_scheduler)
        for _ in range(workers):
            spawn(_serve_http(sock))
        while code == 0 and signal.sigwait(signals) == signal.SIGCHLD:
            for pid, (started, target), status in _reap(children):
                what, plural = ("scheduler process", "scheduler processes") if target is run_scheduler \
                    else ("worker", "workers")
                # Only its own failures count (an exception: exit status 1; a crash: a signal such as
                # SIGSEGV). Stopped from outside (SIGKILL, the OOM killer; SIGTERM or SIGINT, which
                # it takes and exits 0 on) is no sign of a process that cannot start.
                failed = os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0 or os.WIFSIGNALED(status) \
                    and os.WTERMSIG(status) not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
                young = time.monotonic() - started < RESPAWN_QUICK
                quick = quick_deaths.get(what, 0) + 1 if young and failed else 0
                quick_deaths[what] = quick
                # Any quick death, killed from outside too (the OOM killer, as it starts): wait a
                # little longer each time before the next, up to RESPAWN_PAUSE_MAX.
                young_deaths[what] = young_deaths.get(what, 0) + 1 if young else 0
                if young_deaths[what] > 1:
                    time.sleep(min(0.05 * 2 ** (young_deaths[what] - 2), RESPAWN_PAUSE_MAX))
                if quick >= RESPAWN_GIVE_UP:
                    print(f"kie-mock serve: {quick} {plural} in a row died as they started; stopping",
                          file=sys.stderr, flush=True)
                    code = 1
                    break
                print(f"kie-mock serve: {what} {pid} died; starting another", file=sys.stderr, flush=True)
                spawn(target)
    finally:
        _stop_children(children, signals)
        if sock is not None:
            sock.close()
        while signal.sigtimedwait(signals, 0) is not None:  # nothing left pending to act on
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    return code


def _reap(children: dict[int, tuple]) -> list[tuple[int, tuple, int]]:
    """The children that have exited (reaped): (pid, what `children` had for it, wait status)."""
    gone = []
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in children:
            gone.append((pid, children.pop(pid), status))
    return gone


def _signal_all(children: dict, sig: int) -> None:
    for pid in children:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_children(children: dict, signals: set) -> None:
    """SIGTERM to every worker, then wait for them (signals still blocked: taken here); a second
    SIGTERM or SIGINT, or WORKER_STOP_TIMEOUT, and they get SIGKILL."""
    _signal_all(children, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT
    while children:
        _reap(children)
        left = deadline - time.monotonic()
        if not children or left <= 0:
            break
        sig = signal.sigtimedwait(signals, min(left, 0.5))
        if sig is not None and sig.si_signo != signal.SIGCHLD:
            break  # asked again: no more waiting
    _signal_all(children, signal.SIGKILL)
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    children.clear()


def _prctl(option: int, arg) -> bool:
    """prctl(2) on this process; False where there is none (not Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    return True


def _set_name(name: str) -> None:
    """The process's name as `ps -o comm` and /proc/PID/comm show it (Linux; elsewhere unchanged)."""
    _prctl(15, name.encode()[:15])  # PR_SET_NAME


def _die_with(parent: int) -> None:
    """In a worker: be killed when the parent dies, however it dies (Linux; elsewhere the worker
    outlives a parent killed with SIGKILL)."""
    if _prctl(1, int(signal.SIGKILL)) and os.getppid() != parent:  # PR_SET_PDEATHSIG; it died before
        os._exit(1)


def _run_granian(cfg: Config, workers: int, line: str, schedulers: int) -> int:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    threads = int(os.environ.get("KIE_MOCK_HTTP_THREADS", THREADS_PER_WORKER))
    os.environ[ENV_MULTIPROCESS] = "1" if workers > 1 else "0"
    if (os.environ.get("KIE_MOCK_HTTP_INTERFACE") or default_interface(cfg.store)) == "rsgi":
        target, interface = "mock_server.server:worker_rsgi_app", Interfaces.RSGI
        extra = {"loop": _event_loop()}
    else:
        target, interface = "mock_server.server:worker_app", Interfaces.WSGI
        extra = {"blocking_threads": threads, "backpressure": max(threads * 16, 128)}
    srv = Server(target, address=cfg.host, port=cfg.port, interface=interface,
                 workers=workers, factory=True, log_level=LogLevels.warning, log_access=False,
                 respawn_failed_workers=True, workers_kill_timeout=10, **extra)
    srv.on_startup(lambda: print(line, flush=True))  # called once the socket is bound
    if not schedulers:
        srv.serve()
        return 0
    try:  # granian binds later: no scheduler process for a server that cannot start
        _listen(cfg.host, cfg.port).close()
    except OSError as exc:
        print(f"kie-mock serve: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    helper = _fork_supervisor(schedulers)  # before granian starts any thread
    stopping = threading.Event()
    threading.Thread(target=_stop_when_gone, args=(helper, stopping), daemon=True,
                     name="kie-mock-scheduler-watch").start()
    try:
        srv.serve()
    finally:
        stopping.set()
        gone_early = _stop_process(helper)
    return 1 if gone_early else 0


def _fork_supervisor(schedulers: int) -> int:
    """A child that supervises the scheduler processes (`_supervise` without HTTP workers), for
    servers that fork their own workers (granian). It dies with this process, however it dies;
    in a process group of its own, so that a Ctrl-C reaches it only through this process (one
    SIGTERM, once the server has stopped), not as a second signal."""
    parent = os.getpid()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no signal before the child blocks them
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        _die_with(parent)
        code = _supervise(None, 0, schedulers)
    finally:
        _exit(code)


def _stop_when_gone(helper: int, stopping: threading.Event) -> None:
    """In granian's main process: should the scheduler's supervisor end while the server runs (it
    gave up on a scheduler process that kept dying, or was killed), stop the server, rather than
    go on accepting covers whose callbacks never come. Waits without reaping (the pid stays
    taken until `_stop_process` reaps it)."""
    try:
        os.waitid(os.P_PID, helper, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return
    if not stopping.is_set():
        print("kie-mock serve: the scheduler process is gone (callbacks would stop); stopping",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)


def _exit(code: int) -> None:
    """End a forked child: what it printed is flushed, nothing of the parent's runs (atexit), and
    no signal turns into an exception on the way out."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _stop_process(pid: int) -> bool:
    """Stop a child: SIGTERM, then SIGKILL if it has not exited after WORKER_STOP_TIMEOUT.
    True if it had exited before it was asked to."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] != 0:
            return True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
    except (ProcessLookupError, ChildProcessError):
        pass
    return False


def default_interface(store: str) -> str:
    """RSGI (requests on the event loop) for the in-process stores; WSGI threads for Redis, whose
    network round trips overlap in threads (measured, POST upload-cover: 1,330 req/s on WSGI
    threads against 950 on the loop)."""
    return "wsgi" if networked(store) else "rsgi"


def _event_loop():
    """uvloop when installed (a dependency; measured 9,000 req/s against asyncio's 7,400), else granian's pick."""
    from granian.constants import Loops

    try:
        import uvloop  # noqa: F401
    except ImportError:
        return Loops.auto
    return Loops.uvloop


def _run_gunicorn(cfg: Config, workers: int, line: str, kind: str) -> int:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        print("kie-mock serve: KIE_MOCK_HTTP_SERVER=gunicorn-* needs gunicorn: pip install gunicorn", file=sys.stderr)
        return 2

    threads = int(os.environ.get("KIE_MOCK_HTTP_THREADS", THREADS_PER_WORKER))
    host = url_host(cfg.host)
    options = {
        "bind": f"{host}:{cfg.port}", "workers": workers, "worker_class": kind,
        "threads": threads if kind == "gthread" else 1, "timeout": 120, "graceful_timeout": 10,
        "keepalive": 5, "accesslog": None, "errorlog": "-", "loglevel": "warning", "backlog": 2048,
        "when_ready": lambda arbiter: print(line, flush=True),
        "worker_exit": lambda arbiter, worker: _stop_worker(getattr(worker, "wsgi", None)),
    }

    class App(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):  # in the worker, after the fork
            return worker_app()

    App().run()
    return 0


def _stop_worker(app) -> None:
    svc = getattr(app, "extensions", {}).get("kie_mock") if app is not None else None
    if svc is not None:
        svc.scheduler.stop()


def _run_werkzeug(cfg: Config, line: str) -> int:
    from werkzeug.serving import make_server

    app = worker_app()
    srv = make_server(cfg.host, cfg.port, app, threaded=True)
    print(line, flush=True)
    # shutdown() waits for serve_forever() to return: ask from another thread.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown, daemon=True).start())
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_worker(app)
    return 0


if __name__ == "__main__":
    sys.exit(run(Config()))
