#!/usr/bin/env python3
"""Loopback benchmark: kie-mock (several configurations) vs Stoplight Prism vs WireMock, driven by wrk.

One command, from the repository root::

    python bench/run.py                      # all targets, 10 s per scenario
    python bench/run.py --only fake --duration 5           # the three fake variants only
    python bench/run.py --only fake-memory,prism --json bench/results/run.json

Every target is started as a subprocess on a free 127.0.0.1 port, one target at
a time (so the servers never compete with each other for the 2 cores), polled
until ready, warmed up (``--warmup`` for the fakes; ``--peer-warmup``, 30 s, for
Prism and WireMock, whose JIT compilers need that long to reach a steady speed),
loaded with wrk, measured (RSS before/after), and killed. ``--interleave`` starts
every server at once and takes the measured runs in rounds, each loading every
target once in turn: a slow drift of the machine's speed then falls on all alike,
but an idle JVM still compiles in the background during the others' runs (the
report shows that CPU).

Targets (``--only``; ``fake`` is an alias for every fake variant)
  fake-memory     ``kie-mock serve --port {port} --store memory``: one worker,
                  in-memory store.
  fake-sqlite     ``kie-mock serve --port {port}``: the default, one worker and a
                  fresh SQLite file in a temp dir.
  fake-sqlite-2w  ``kie-mock serve --port {port} --workers 2``: two worker
                  processes sharing that SQLite file.
  fake-custom     only with ``--fake-cmd CMD``: one extra variant running CMD
                  (placeholders {port} {host} {python}); measured after the
                  three above whenever ``fake`` or ``fake-custom`` is selected.
            Every fake variant gets ``--fake-args`` appended and runs with env
            KIE_MOCK_RATE_LIMIT=0, KIE_MOCK_RECORD_INFO_PER_SECOND=0,
            KIE_MOCK_CREDITS=1000000000, KIE_MOCK_STAGE_DELAYS=600,900,1200
            (+ ``--fake-env``); KIE_MOCK_* variables inherited from the calling
            shell are dropped so that each variant is what its name says.
            Ready when GET /api/v1/chat/credit with the bearer key answers 2xx.
            The stage delays mean that every accepted task does schedule its
            callbacks (part of accepting a task) but none falls due during the
            measurement: the fake is measured accepting and polling, not
            delivering callbacks -- the same thing Prism is measured doing with
            its callbacks stripped (the default).  Callback delivery is measured
            by bench/lateness.py.
  prism     Stoplight Prism (npm @stoplight/prism-cli 5.14.x) in mock mode on a
            copy of ``--spec`` with every ``callbacks`` removed (default; Prism
            would otherwise fire the spec's callback at the body's callBackUrl
            on every request, which dominates its cost: ``--prism-callbacks``
            mocks the spec as written), with ``--errors`` (validation
            violations become error responses) and ``-v error`` (quiet).
            Ready when it answers HTTP.
  wiremock  WireMock standalone jar from the npm package ``wiremock``, run with
            ``java -jar``, throughput flags, static stubs written to a temp root dir.
            Ready when GET /__admin/health answers.

Scenarios (per target)
  POST upload-cover   POST /api/v1/generate/upload-cover, JSON body, bearer auth.
  GET record-info     GET /api/v1/generate/record-info?taskId=ID.  For a fake
                      variant a task is created first (one POST) and its taskId
                      used; Prism uses its mock of the path (skipped if the spec
                      lacks it: a 404 probe); WireMock serves a static stub.

Installs on first run (unless --no-install)
  * wrk:  ``apt-get update && apt-get install -y wrk`` (only if ``wrk`` is not on
    PATH and we are root).  Without wrk nothing can be measured: exit 2.
  * npm:  ``npm install --prefix bench/.cache --no-audit --no-fund <pkg>`` for
    @stoplight/prism-cli@~5.14.2 and wiremock@3.13.2 (only the selected ones).
    A peer that cannot be installed/started is reported as "unavailable".

Flags
  --only LIST           comma list of fake-memory,fake-sqlite,fake-sqlite-2w,
                        fake-custom,prism,wiremock or the alias fake (= every fake
                        variant; fake-custom only with --fake-cmd)
                        (default: fake,prism,wiremock)
  --duration S          measured wrk run per scenario, seconds (default 10)
  --repeat N            measured runs per scenario; median run (by req/s) reported,
                        min-max req/s shown in brackets (default 1)
  --warmup S            unmeasured wrk run before each scenario (default 2; 0 = none)
  --connections N       wrk -c (default 32)
  --threads N           wrk -t (default 2)
  --wrk-timeout S       wrk --timeout: slower responses count as timeouts (default 5)
  --no-body-check       drop the Lua response() hook that counts envelope code != 200
  --scenarios LIST      comma list of post,get (default: both)
  --fake-cmd CMD        defines the extra variant fake-custom (none by default);
                        placeholders {port} {host} {python} (sys.executable)
  --fake-args ARGS      extra args appended to every fake variant's command (shell-split)
  --fake-env K=V        extra env for every fake variant (repeatable; overrides the above)
  --api-key KEY         bearer key for every request (default kie-mock-key)
  --spec PATH           OpenAPI document for Prism (default: <repo>/openapi.yaml)
  --prism-args ARGS     extra args for ``prism mock`` (shell-split)
  --prism-no-callbacks  (default) mock a copy of --spec with ``callbacks`` removed
  --prism-callbacks     mock --spec as written: Prism fires the spec's callback at
                        the body's callBackUrl on every request
  --wiremock-threads N  WireMock --container-threads (default 32)
  --java-opts ARGS      JVM options for WireMock (default "-Xms256m -Xmx512m")
  --ready-timeout S     readiness deadline per server (default 90)
  --cache-dir DIR       npm prefix + logs (default bench/.cache)
  --no-install          never run apt-get / npm; missing tools => unavailable
  --json FILE           also write all results + machine info as JSON
  --markdown FILE       also write the markdown report to FILE

Output: a markdown report on stdout (progress goes to stderr), one row per target
(each fake variant its own row) and scenario.  Columns: req/s,
p50/p99 latency (ms, from wrk's Lua ``done()`` histogram), non-2xx (wrk counts
HTTP status >= 400), code!=200 (2xx answers whose JSON envelope code is not 200,
counted by a Lua ``response()`` hook; --no-body-check turns it off), socket errors (connect/read/write/timeout), server CPU seconds used during the
run (whole process tree, /proc) and requests per server CPU-second, RSS of the
server's whole process tree before -> after the measured run (MiB), and then one
column per measured fake variant V, "V÷peer req/s, p99": on each peer row, V's
req/s / the peer's req/s and V's p99 / the peer's p99 for the same scenario
("—" on the fake rows).  The JSON has the same ratios as
ratios_fake_over_peer[scenario][fake variant][peer] = {rps, p99}.

Exit status: 0 if at least one scenario was measured, 1 if none, 2 on a fatal
setup error (no wrk), 130 on Ctrl-C.  All subprocesses are killed on every exit
path (normal, exception, Ctrl-C, SIGTERM); they also get SIGKILL via
PR_SET_PDEATHSIG should this script be killed outright.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_CACHE = BENCH_DIR / ".cache"

HOST = "127.0.0.1"
UPLOAD_PATH = "/api/v1/generate/upload-cover"
RECORD_PATH = "/api/v1/generate/record-info"
CREDIT_PATH = "/api/v1/chat/credit"
STUB_TASK_ID = "5c79be8e"

PRISM_PKG = "@stoplight/prism-cli@~5.14.2"
PRISM_VERSION_PREFIX = "5.14."
WIREMOCK_PKG = "wiremock@3.13.2"
WIREMOCK_VERSION = "3.13.2"

# Fake variants, measured in this order: name -> (label, command).  {port} {host}
# {python} are substituted; --fake-args is appended to each.
FAKE_VARIANTS = {
    "fake-memory": ("kie-mock, memory store", "kie-mock serve --port {port} --store memory"),
    "fake-sqlite": ("kie-mock, SQLite (default)", "kie-mock serve --port {port}"),
    "fake-sqlite-2w": ("kie-mock, SQLite, 2 workers", "kie-mock serve --port {port} --workers 2"),
}
CUSTOM_FAKE = "fake-custom"  # exists only when --fake-cmd is given
FAKE_ALIAS = "fake"          # --only alias: every fake variant
# KIE_MOCK_STAGE_DELAYS: accepting a task schedules its callbacks (that cost is
# measured), but none is due before 600 s, so no callback is delivered while wrk
# runs: the measurement is of accepting and polling (callback delivery: bench/lateness.py).
FAKE_ENV = {"KIE_MOCK_RATE_LIMIT": "0", "KIE_MOCK_RECORD_INFO_PER_SECOND": "0",
            "KIE_MOCK_CREDITS": "1000000000", "KIE_MOCK_STAGE_DELAYS": "600,900,1200"}

VALID_BODY = {
    "uploadUrl": "https://storage.example.com/upload",
    "prompt": "A calm and relaxing piano track",
    "customMode": False,
    "instrumental": False,
    "model": "V3_5",
    "callBackUrl": "http://127.0.0.1:9/cb",
}
STUB_POST_RESPONSE = {"code": 200, "msg": "success", "data": {"taskId": STUB_TASK_ID}}
STUB_GET_RESPONSE = {
    "code": 200,
    "msg": "success",
    "data": {"taskId": STUB_TASK_ID, "status": "SUCCESS", "response": {"sunoData": []}},
}

PEERS = ("prism", "wiremock")
ALL_TARGETS = (*FAKE_VARIANTS, CUSTOM_FAKE, *PEERS)  # run order
TARGET_LABEL = {**{name: label for name, (label, _) in FAKE_VARIANTS.items()},
                CUSTOM_FAKE: "kie-mock, --fake-cmd", "prism": "Prism", "wiremock": "WireMock"}
ALL_SCENARIOS = ("post", "get")
SCENARIO_LABEL = {"post": "POST upload-cover", "get": "GET record-info"}


def is_fake(target: str) -> bool:
    return target == CUSTOM_FAKE or target in FAKE_VARIANTS


def resolve_targets(only: list[str], fake_cmd: str | None) -> list[str]:
    """Expand the ``fake`` alias and return the selected targets in run order.
    ``fake-custom`` exists only when ``--fake-cmd`` is given."""
    chosen = set(only)
    if FAKE_ALIAS in chosen:
        chosen |= set(FAKE_VARIANTS)
        if fake_cmd:
            chosen.add(CUSTOM_FAKE)
    if CUSTOM_FAKE in chosen and not fake_cmd:
        raise ValueError(f"--only {CUSTOM_FAKE} needs --fake-cmd CMD (it runs CMD)")
    return [t for t in ALL_TARGETS if t in chosen]


def fake_command(target: str, args) -> str:
    """The command template of a fake variant, without --fake-args."""
    return args.fake_cmd if target == CUSTOM_FAKE else FAKE_VARIANTS[target][1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A target could not be installed or started; reported, not fatal."""


class Fatal(Exception):
    """Nothing can be measured (e.g. no wrk)."""


# --------------------------------------------------------------------------
# subprocess management
# --------------------------------------------------------------------------

_PROCS: list[subprocess.Popen] = []
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def _pdeathsig_only() -> None:  # for wrk: stays in our process group (gets Ctrl-C)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def spawn(argv: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "wb")
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, preexec_fn=_child_setup, close_fds=True,
        )
    finally:
        logf.close()
    _PROCS.append(proc)
    return proc


def kill(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group (server + its workers), then SIGKILL."""
    if proc not in _PROCS:
        return
    pids = _tree_pids(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids:  # workers that left the group
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _PROCS.remove(proc)


def kill_all() -> None:
    for proc in list(reversed(_PROCS)):
        try:
            kill(proc, grace=3.0)
        except Exception:
            pass


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------
# /proc helpers: process tree RSS and CPU time
# --------------------------------------------------------------------------

def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_rss_mib(root: int) -> float | None:
    total_kib, seen = 0, False
    for pid in _tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
                        seen = True
                        break
        except OSError:
            continue
    return round(total_kib / 1024, 1) if seen else None


def tree_cpu_seconds(root: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().decode(errors="replace").rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


# --------------------------------------------------------------------------
# networking helpers
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http(method: str, url: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen, name: str, url: str, headers: dict[str, str],
               ok: Callable[[int], bool], timeout: float, log_path: Path) -> float:
    start = time.monotonic()
    last = "no answer yet"
    while True:
        rc = proc.poll()
        if rc is not None:
            raise Unavailable(f"{name} exited with code {rc} before becoming ready "
                              f"(log {log_path}):\n{tail(log_path)}")
        try:
            status, _ = http("GET", url, headers, timeout=2.0)
            if ok(status):
                return time.monotonic() - start
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() - start > timeout:
            raise Unavailable(f"{name} not ready after {timeout:.0f}s polling GET {url} "
                              f"(last: {last}; log {log_path}):\n{tail(log_path)}")
        time.sleep(0.2)


# --------------------------------------------------------------------------
# installation
# --------------------------------------------------------------------------

def ensure_wrk(install: bool) -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if not install:
        raise Fatal("wrk not found on PATH (and --no-install given): apt-get install -y wrk")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Fatal("wrk not found and cannot apt-get it (need root + apt-get): "
                    "install the Debian package 'wrk'")
    log("wrk missing: apt-get update && apt-get install -y wrk")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise Fatal(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    wrk = shutil.which("wrk")
    if not wrk:
        raise Fatal("apt-get install wrk succeeded but wrk is still not on PATH")
    return wrk


def _installed_npm_version(cache: Path, name: str) -> str | None:
    try:
        meta = json.loads((cache / "node_modules" / name / "package.json").read_text())
        return meta.get("version")
    except (OSError, ValueError):
        return None


def ensure_npm(cache: Path, name: str, spec: str, version_ok: Callable[[str], bool],
               install: bool) -> str:
    have = _installed_npm_version(cache, name)
    if have and version_ok(have):
        return have
    if not install:
        raise Unavailable(f"{name} not installed in {cache} (--no-install)")
    npm = shutil.which("npm")
    if not npm:
        raise Unavailable("npm not found on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / "logs" / f"npm-{name.replace('/', '_')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund",
           "--loglevel=error", "--save-exact", spec]
    log(f"installing {spec}: {' '.join(cmd)}")
    try:
        with open(log_path, "wb") as fh:
            res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=600,
                                 stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm install {spec} timed out (log {log_path})")
    have = _installed_npm_version(cache, name)
    if res.returncode != 0 or not have or not version_ok(have):
        raise Unavailable(f"npm install {spec} failed (rc={res.returncode}, "
                          f"installed={have}); log {log_path}:\n{tail(log_path)}")
    return have


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------

@dataclass
class Server:
    target: str
    proc: subprocess.Popen
    port: int
    command: list[str]
    log_path: Path
    ready_s: float
    version: str | None = None
    auth: bool = True
    get_task_id: str | None = STUB_TASK_ID
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def auth_headers(args) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.api_key}"}


def fake_settings(args) -> dict[str, str]:
    """The environment variables set for every fake variant: FAKE_ENV + --fake-env."""
    env = dict(FAKE_ENV)
    for kv in args.fake_env:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def fake_env(args) -> dict[str, str]:
    """Environment of every fake variant: ours minus inherited KIE_MOCK_* (a stray
    KIE_MOCK_STORE or KIE_MOCK_INSTANT in the shell would change what a variant is),
    plus fake_settings()."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIE_MOCK_")}
    env.update(fake_settings(args))
    return env


def start_fake(target: str, args, run_dir: Path) -> Server:
    port = free_port()
    cmdline = fake_command(target, args).format(port=port, host=HOST, python=sys.executable)
    argv = shlex.split(cmdline) + shlex.split(args.fake_args or "")
    if not argv:
        raise Unavailable("empty --fake-cmd")
    exe = argv[0]
    if os.sep not in exe and not shutil.which(exe):
        raise Unavailable(f"fake command '{exe}' not found on PATH "
                          f"(install the package, e.g. pip install -e ., or pass --fake-cmd)")
    log_path = run_dir / f"{target}.log"
    log(f"starting {target}: {shlex.join(argv)}")
    proc = spawn(argv, log_path, env=fake_env(args), cwd=REPO_ROOT)
    ready = wait_ready(proc, target, f"http://{HOST}:{port}{CREDIT_PATH}", auth_headers(args),
                       lambda s: 200 <= s < 300, args.ready_timeout, log_path)
    return Server(target, proc, port, argv, log_path, ready, get_task_id=None)


def strip_callbacks(spec: Path, out_dir: Path) -> Path:
    """Copy of ``spec`` without ``callbacks`` (Prism would fire each one per request),
    with relative file $refs made absolute so the copy resolves from ``out_dir``."""
    try:
        import yaml  # PyYAML: a dependency of the project itself
    except ImportError as exc:
        raise Unavailable(f"stripping the spec's callbacks needs PyYAML ({exc}); "
                          f"or pass --prism-callbacks")
    doc = yaml.safe_load(spec.read_text())

    def walk(node):
        if isinstance(node, dict):
            node.pop("callbacks", None)
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#") and "://" not in ref:
                path, _, frag = ref.partition("#")
                node["$ref"] = str((spec.parent / path).resolve()) + (f"#{frag}" if frag else "")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    out = out_dir / f"{spec.stem}.no-callbacks.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def start_prism(args, run_dir: Path) -> Server:
    spec = Path(args.spec).resolve()
    if not spec.is_file():
        raise Unavailable(f"OpenAPI spec not found: {spec}")
    if not args.prism_callbacks:  # the default: see --prism-callbacks
        spec = strip_callbacks(spec, run_dir)
    if not shutil.which("node"):
        raise Unavailable("node not found on PATH")
    version = ensure_npm(args.cache_dir, "@stoplight/prism-cli", PRISM_PKG,
                         lambda v: v.startswith(PRISM_VERSION_PREFIX), args.install)
    prism_js = args.cache_dir / "node_modules" / "@stoplight" / "prism-cli" / "dist" / "index.js"
    if not prism_js.is_file():
        raise Unavailable(f"prism entry point missing: {prism_js}")
    port = free_port()
    argv = [shutil.which("node"), str(prism_js), "mock", str(spec), "--host", HOST,
            "--port", str(port), "--errors", "--verboseLevel", "error"]
    argv += shlex.split(args.prism_args or "")
    log_path = run_dir / "prism.log"
    log(f"starting prism {version}: {shlex.join(argv)}")
    proc = spawn(argv, log_path, cwd=run_dir)
    # Prism has no health endpoint: any HTTP answer means it is listening.
    ready = wait_ready(proc, "prism", f"http://{HOST}:{port}{UPLOAD_PATH}", auth_headers(args),
                       lambda s: True, args.ready_timeout, log_path)
    return Server("prism", proc, port, argv, log_path, ready, version=version)


def write_wiremock_root(root: Path) -> None:
    mappings = root / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    (root / "__files").mkdir(exist_ok=True)
    stubs = {
        "upload-cover.json": {
            "request": {"method": "POST", "urlPath": UPLOAD_PATH},
            "response": {"status": 200, "jsonBody": STUB_POST_RESPONSE,
                         "headers": {"Content-Type": "application/json"}},
        },
        "record-info.json": {
            "request": {"method": "GET", "urlPath": RECORD_PATH},
            "response": {"status": 200, "jsonBody": STUB_GET_RESPONSE,
                         "headers": {"Content-Type": "application/json"}},
        },
    }
    for name, stub in stubs.items():
        (mappings / name).write_text(json.dumps(stub, indent=2))


def start_wiremock(args, run_dir: Path) -> Server:
    java = shutil.which("java")
    if not java:
        raise Unavailable("java not found on PATH")
    version = ensure_npm(args.cache_dir, "wiremock", WIREMOCK_PKG,
                         lambda v: v == WIREMOCK_VERSION, args.install)
    jars = sorted((args.cache_dir / "node_modules" / "wiremock").glob("**/wiremock-standalone-*.jar"))
    if not jars:
        raise Unavailable(f"no wiremock-standalone-*.jar inside {args.cache_dir}/node_modules/wiremock")
    root = run_dir / "wiremock-root"
    write_wiremock_root(root)
    port = free_port()
    argv = [java, *shlex.split(args.java_opts or ""), "-jar", str(jars[-1]),
            "--port", str(port), "--bind-address", HOST, "--root-dir", str(root),
            "--no-request-journal", "--disable-request-logging",
            "--async-response-enabled", "true",
            "--container-threads", str(args.wiremock_threads),
            "--disable-banner", "--disable-extensions-scanning",
            "--use-chunked-encoding", "never"]
    log_path = run_dir / "wiremock.log"
    log(f"starting wiremock {version}: {shlex.join(argv)}")
    proc = spawn(argv, log_path, cwd=run_dir)
    ready = wait_ready(proc, "wiremock", f"http://{HOST}:{port}/__admin/health", {},
                       lambda s: 200 <= s < 300, args.ready_timeout, log_path)
    return Server("wiremock", proc, port, argv, log_path, ready, version=version)


def start_target(target: str, args, run_dir: Path) -> Server:
    if is_fake(target):
        return start_fake(target, args, run_dir)
    return {"prism": start_prism, "wiremock": start_wiremock}[target](args, run_dir)


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

_LUA_CHECK = r'''
-- Count 2xx responses whose JSON envelope code is not 200: kie.ai (and so the
-- fake) reports most errors as HTTP 200 + {"code": 4xx, ...}.  Each wrk thread
-- has its own Lua state; done() sums the per-thread counters.
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad_code = 0
function response(status, headers, body)
  if status >= 200 and status < 300 then
    local c = body and body:match('"code"%s*:%s*(%-?%d+)')
    if c ~= "200" then bad_code = bad_code + 1 end
  end
end
local function bad_codes()
  local n = 0
  for _, t in ipairs(threads) do n = n + (t:get("bad_code") or 0) end
  return n
end
'''

_LUA_NOCHECK = r'''
local function bad_codes() return -1 end
'''

_LUA_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q) return latency:percentile(q) end
  io.write(string.format(
    'WRK_JSON {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,"bad_code":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.0f,"mean":%.3f,"stdev":%.3f,"max":%.0f,' ..
    '"p50":%.0f,"p75":%.0f,"p90":%.0f,"p99":%.0f,"p99_9":%.0f}}\n',
    summary.duration, summary.requests, summary.bytes, bad_codes(),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    p(50), p(75), p(90), p(99), p(99.9)))
end
'''


def _lua_str(s: str) -> str:
    level = "="
    while f"]{level}]" in s:
        level += "="
    return f"[{level}[{s}]{level}]"


def lua_script(method: str, headers: dict[str, str], body: str | None,
               check_body: bool = True) -> str:
    lines = [f"wrk.method = {_lua_str(method)}"]
    for k, v in headers.items():
        lines.append(f"wrk.headers[ {_lua_str(k)} ] = {_lua_str(v)}")
    if body is not None:
        lines.append(f"wrk.body = {_lua_str(body)}")
    return "\n".join(lines) + "\n" + (_LUA_CHECK if check_body else _LUA_NOCHECK) + _LUA_DONE


def parse_wrk(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise ValueError("wrk printed no WRK_JSON line")


def run_wrk(wrk: str, url: str, script: Path, duration: float, args) -> tuple[dict, str]:
    cmd = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s",
           "--timeout", f"{args.wrk_timeout:g}s", "--latency", "-s", str(script), url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, preexec_fn=_pdeathsig_only)
    try:
        out, _ = proc.communicate(timeout=duration + args.wrk_timeout + 30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}:\n{out[-2000:]}")
    return parse_wrk(out), out


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------

@dataclass
class Result:
    target: str
    scenario: str
    status: str  # ok | unavailable | skipped | error
    note: str = ""
    url: str = ""
    probe_status: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    rps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p99_9_ms: float | None = None
    max_ms: float | None = None
    non_2xx: int | None = None
    bad_code: int | None = None
    socket_errors: dict | None = None
    rss_idle_mib: float | None = None
    rss_before_mib: float | None = None
    rss_after_mib: float | None = None
    server_cpu_s: float | None = None
    rps_runs: list | None = None
    loadavg_after: str | None = None
    req_per_cpu_s: float | None = None
    idle_peers_cpu_s: float | None = None  # CPU the other (idle) servers used during the reported run
    server_version: str | None = None
    server_cmd: str | None = None
    wrk_cmd: str | None = None
    wrk_raw: str | None = None


def scenario_request(server: Server, scen: str, args) -> tuple[str, str, dict[str, str], str | None]:
    headers = auth_headers(args)
    if scen == "post":
        headers["Content-Type"] = "application/json"
        return "POST", f"{server.base}{UPLOAD_PATH}", headers, json.dumps(VALID_BODY, separators=(",", ":"))
    task = server.get_task_id or STUB_TASK_ID
    return "GET", f"{server.base}{RECORD_PATH}?taskId={task}", headers, None


def create_fake_task(server: Server, args) -> str:
    method, url, headers, body = scenario_request(server, "post", args)
    status, raw = http(method, url, headers, body.encode(), timeout=10)
    try:
        payload = json.loads(raw)
        task = payload["data"]["taskId"]
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"could not create a task on the fake: HTTP {status} {raw[:300]!r}")
    if not task:
        raise RuntimeError(f"fake returned an empty taskId: {raw[:300]!r}")
    return str(task)


_MEASURE_ERRORS = (RuntimeError, ValueError, OSError, urllib.error.URLError)


class TargetRun:
    """One target's server and results, driven a step at a time (start, then per scenario:
    prepare, measure once per round, finish; stop), so that several targets can take turns.
    Results are appended to ``results`` as they are made: an interrupted run keeps them."""

    def __init__(self, target: str, args, wrk: str, run_dir: Path, results: list[Result]):
        self.target, self.args, self.wrk, self.run_dir, self.results = target, args, wrk, run_dir, results
        self.server: Server | None = None
        self.rss_idle: float | None = None
        self.open: dict = {}  # scenario -> [Result, method, url, script, runs]
        self.others: list[TargetRun] = []  # the servers up at the same time (idle while this one runs)

    def start(self) -> bool:
        try:
            self.server = start_target(self.target, self.args, self.run_dir)
        except Unavailable as exc:
            msg = str(exc)
            log(f"{self.target}: UNAVAILABLE: {msg}")
            first = msg.splitlines()[0] if msg else "unavailable"
            self.results.extend(Result(self.target, s, "unavailable", note=first) for s in self.args.scenarios)
            return False
        log(f"{self.target}: ready on port {self.server.port} after {self.server.ready_s:.1f}s")
        self.rss_idle = tree_rss_mib(self.server.proc.pid)
        return True

    def stop(self) -> None:
        if self.server is not None:
            kill(self.server.proc)

    def _failed(self, res: Result, exc: BaseException) -> None:
        res.status, res.note = "error", str(exc).splitlines()[0][:200]
        log(f"{self.target}/{res.scenario}: ERROR {exc}")

    def prepare(self, scen: str) -> None:
        """Probe the scenario's request, write its wrk script, warm up."""
        server, args, target = self.server, self.args, self.target
        res = Result(target, scen, "ok", rss_idle_mib=self.rss_idle,
                     server_version=server.version, server_cmd=shlex.join(server.command))
        self.results.append(res)
        try:
            if scen == "get" and is_fake(target):
                server.get_task_id = create_fake_task(server, args)
            method, url, headers, body = scenario_request(server, scen, args)
            res.url = url
            status, raw = http(method, url, headers, body.encode() if body else None, timeout=10)
            res.probe_status = status
            if not 200 <= status < 300:
                if status == 404 and target == "prism" and scen == "get":
                    res.status, res.note = "skipped", "path not in spec (probe 404)"
                    log(f"{target}/{scen}: skipped (probe 404)")
                    return
                res.note = f"probe HTTP {status}: {raw[:120].decode(errors='replace')}"
                log(f"{target}/{scen}: WARNING {res.note}")
            script = self.run_dir / f"{target}-{scen}.lua"
            script.write_text(lua_script(method, headers, body, args.body_check))
            if server.proc.poll() is not None:
                raise RuntimeError(f"server died (rc={server.proc.returncode}):\n{tail(server.log_path)}")
            warmup = args.warmup if is_fake(target) else args.peer_warmup
            if warmup > 0:
                log(f"{target}/{scen}: warm-up {warmup:g}s")
                run_wrk(self.wrk, url, script, warmup, args)
            res.rss_before_mib = tree_rss_mib(server.proc.pid)
            self.open[scen] = [res, method, url, script, []]
        except _MEASURE_ERRORS as exc:
            self._failed(res, exc)
        except BaseException:
            res.status, res.note = "error", "interrupted"
            raise

    def measure(self, scen: str, i: int) -> None:
        """One measured run (round i) of a prepared scenario."""
        if scen not in self.open:
            return
        res, method, url, script, runs = self.open[scen]
        args = self.args
        try:
            if self.server.proc.poll() is not None:
                raise RuntimeError(f"server died (rc={self.server.proc.returncode}):\n{tail(self.server.log_path)}")
            log(f"{self.target}/{scen}: measuring {args.duration:g}s "
                f"(-t{args.threads} -c{args.connections}, run {i + 1}/{args.repeat}) {method} {url}")
            idle0 = sum(tree_cpu_seconds(o.server.proc.pid) for o in self.others)
            cpu0 = tree_cpu_seconds(self.server.proc.pid)
            stats, raw_out = run_wrk(self.wrk, url, script, args.duration, args)
            cpu = tree_cpu_seconds(self.server.proc.pid) - cpu0
            idle = sum(tree_cpu_seconds(o.server.proc.pid) for o in self.others) - idle0
            runs.append((stats, raw_out, cpu, idle))
        except _MEASURE_ERRORS as exc:
            del self.open[scen]
            self._failed(res, exc)
        except BaseException:
            res.status, res.note = "error", "interrupted"
            raise

    def finish(self, scen: str) -> None:
        """The median run (by req/s) becomes the scenario's result."""
        entry = self.open.pop(scen, None)
        if entry is None:
            return
        try:
            self._finish(*entry)
        except _MEASURE_ERRORS as exc:
            self._failed(entry[0], exc)

    def interrupted(self) -> None:
        """Mark the scenarios still open (not finished) as interrupted."""
        for res, *_ in self.open.values():
            res.status, res.note = "error", "interrupted"
        self.open.clear()

    def _finish(self, res: Result, method: str, url: str, script: Path, runs: list) -> None:
        args, server = self.args, self.server
        runs.sort(key=lambda r: r[0]["requests"] / max(r[0]["duration_us"], 1))
        stats, raw_out, cpu_s, idle_s = runs[len(runs) // 2]
        if self.others:
            res.idle_peers_cpu_s = round(idle_s, 2)
        res.rps_runs = [round(r[0]["requests"] / (r[0]["duration_us"] / 1e6), 1) for r in runs]
        res.server_cpu_s = round(cpu_s, 2)
        res.rss_after_mib = tree_rss_mib(server.proc.pid)
        res.loadavg_after = _loadavg()
        if server.proc.poll() is not None:
            res.note = (res.note + "; " if res.note else "") + "server exited during load"
        fill_stats(res, stats)
        if res.server_cpu_s:
            res.req_per_cpu_s = round(res.requests / res.server_cpu_s, 1)
        res.wrk_raw = raw_out
        res.wrk_cmd = (f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
                       f"--timeout {args.wrk_timeout:g}s --latency -s {script.name} {url}")
        log(f"{self.target}/{res.scenario}: {res.rps:,.0f} req/s p50 {res.p50_ms:.2f} ms "
            f"p99 {res.p99_ms:.2f} ms non-2xx {res.non_2xx} code!=200 {res.bad_code} "
            f"RSS {res.rss_before_mib}->{res.rss_after_mib} MiB")


def bench_target(target: str, args, wrk: str, run_dir: Path,
                 results: list[Result] | None = None) -> list[Result]:
    """Start one target, run every scenario, kill it (the default order: one target at a time)."""
    results = [] if results is None else results
    bench_interleaved([target], args, wrk, run_dir, results)
    return results


def bench_interleaved(target_names: list[str], args, wrk: str, run_dir: Path,
                      results: list[Result]) -> list[Result]:
    """Start every target, then per scenario: warm each up, and take the measured runs in
    rounds, each round running every target once, in turn. Slow drifts of the machine's speed
    (other tenants of a virtual machine) then fall on every target alike, instead of on
    whichever target was measured at the time. The servers not being measured sit idle."""
    runs = [TargetRun(t, args, wrk, run_dir, results) for t in target_names]
    live: list[TargetRun] = []
    try:
        for r in runs:
            if r.start():
                live.append(r)
        for r in live:
            r.others = [o for o in live if o is not r]
        for scen in args.scenarios:
            for r in live:
                r.prepare(scen)
            for i in range(args.repeat):
                for r in live:
                    r.measure(scen, i)
            for r in live:
                r.finish(scen)
    except BaseException:
        for r in live:
            r.interrupted()
        raise
    finally:
        for r in live:
            r.stop()
    return results


def fill_stats(res: Result, stats: dict) -> None:
    lat = stats["latency_us"]
    err = stats["errors"]
    res.requests = int(stats["requests"])
    res.duration_s = round(stats["duration_us"] / 1e6, 3)
    res.rps = round(res.requests / res.duration_s, 1) if res.duration_s else 0.0
    res.p50_ms = lat["p50"] / 1000
    res.p90_ms = lat["p90"] / 1000
    res.p99_ms = lat["p99"] / 1000
    res.p99_9_ms = lat["p99_9"] / 1000
    res.max_ms = lat["max"] / 1000
    res.non_2xx = int(err["status"])
    res.bad_code = int(stats["bad_code"]) if stats.get("bad_code", -1) >= 0 else None
    res.socket_errors = {k: int(err[k]) for k in ("connect", "read", "write", "timeout")}


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def _cmd_version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0].strip() if text else None


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def machine_info() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": mem_gib,
        "loadavg": _loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": _cmd_version(["wrk", "--version"]),
        "node": _cmd_version(["node", "--version"]),
        "java": _cmd_version(["java", "-version"]),
    }


def _fmt(v, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def add_ratios(results: list[Result]) -> dict:
    """Ratios of every measured fake variant to every measured peer, per scenario:
    {scenario: {fake variant: {peer: {rps: fake/peer req/s, p99: fake/peer p99}}}}."""
    fakes: dict[str, dict[str, Result]] = {}  # scenario -> variant -> result
    for r in results:
        if is_fake(r.target) and r.status == "ok" and r.rps:
            fakes.setdefault(r.scenario, {})[r.target] = r
    out: dict = {}
    for r in results:
        if is_fake(r.target) or r.status != "ok" or not r.rps:
            continue
        for variant, f in fakes.get(r.scenario, {}).items():
            out.setdefault(r.scenario, {}).setdefault(variant, {})[r.target] = {
                "rps": round(f.rps / r.rps, 3),
                "p99": round(f.p99_ms / r.p99_ms, 3) if r.p99_ms and f.p99_ms is not None else None,
            }
    return out


# The issue's targets for accepting a valid cover (POST), from one run. Lateness is measured by
# bench/lateness.py, not here. "Flat" memory: the server's RSS grew by at most this much over the
# measured POST runs (every accepted task is kept, so a store that holds tasks in memory grows).
TARGET_PRISM_X, TARGET_WIREMOCK_X, TARGET_P99_MS, FLAT_RSS_MIB = 2.0, 1.0, 30.0, 16.0


def targets(results: list[Result], ratios: dict) -> dict:
    """Per measured fake variant, the POST targets: {variant: {check: True/False/None}}; None where
    the run has nothing to judge by (a peer not measured). A run with error answers (non-2xx, or
    an envelope code other than 200) meets no target: speed at answering errors proves nothing.
    Ratios are compared unrounded; "all" is False as soon as one check is."""
    peers = {r.target: r for r in results
             if not is_fake(r.target) and r.scenario == "post" and r.status == "ok" and r.rps}
    out: dict = {}
    for r in results:
        if not (is_fake(r.target) and r.scenario == "post" and r.status == "ok" and r.rps):
            continue
        clean = not r.non_2xx and not r.bad_code
        growth = (r.rss_after_mib - r.rss_before_mib
                  if r.rss_after_mib is not None and r.rss_before_mib is not None else None)

        def judged(ok):
            return None if ok is None else (ok and clean)

        checks = {
            "prism_2x": judged(r.rps / peers["prism"].rps >= TARGET_PRISM_X if "prism" in peers else None),
            "wiremock_1x": judged(r.rps / peers["wiremock"].rps >= TARGET_WIREMOCK_X if "wiremock" in peers else None),
            "p99_under_30ms": judged(r.p99_ms < TARGET_P99_MS if r.p99_ms is not None else None),
            "memory_flat": judged(growth <= FLAT_RSS_MIB if growth is not None else None),
        }
        values = list(checks.values())
        out[r.target] = {**checks, "all": False if False in values else (None if None in values else True),
                         "error_answers": not clean,
                         "rss_growth_mib": None if growth is None else round(growth, 2)}
    return out


def render_targets(verdicts: dict, ratios: dict) -> list[str]:
    if not verdicts:
        return []
    mark = {True: "yes", False: "**no**", None: "n/a"}
    lines = ["### Targets: accepting a valid cover (POST upload-cover)", "",
             f"| fake variant | ≥ {TARGET_PRISM_X:g}× Prism | ≥ {TARGET_WIREMOCK_X:g}× WireMock | "
             f"p99 < {TARGET_P99_MS:g} ms | memory flat (RSS growth ≤ {FLAT_RSS_MIB:g} MiB over the POST runs) | all |",
             "|---|---|---|---|---|---|"]
    for variant, v in verdicts.items():
        peers = ratios.get("post", {}).get(variant, {})
        prism = f"{mark[v['prism_2x']]} ({peers['prism']['rps']:.2f}×)" if "prism" in peers else mark[None]
        wm = f"{mark[v['wiremock_1x']]} ({peers['wiremock']['rps']:.2f}×)" if "wiremock" in peers else mark[None]
        growth = "" if v["rss_growth_mib"] is None else f" ({v['rss_growth_mib']:+.2f} MiB)"
        errors = " (error answers: no target counts)" if v["error_answers"] else ""
        lines.append(f"| {TARGET_LABEL[variant]}{errors} | {prism} | {wm} | {mark[v['p99_under_30ms']]} | "
                     f"{mark[v['memory_flat']]}{growth} | {mark[v['all']]} |")
    lines += ["", "Callback lateness, the fourth target, is measured by `bench/lateness.py`.", ""]
    return lines


def ratio_variants(ratios: dict) -> list[str]:
    """Fake variants that have at least one ratio, in run order: one table column each."""
    have = {v for per_scen in ratios.values() for v in per_scen}
    return [t for t in ALL_TARGETS if t in have]


def _ratio_cell(ratios: dict, r: Result, variant: str) -> str:
    if is_fake(r.target):
        return "—"
    ratio = ratios.get(r.scenario, {}).get(variant, {}).get(r.target)
    if not ratio:
        return "n/a"
    p99 = f"{ratio['p99']:.2f}×" if ratio["p99"] is not None else "–"
    return f"{ratio['rps']:.2f}×, {p99}"


def render_markdown(results: list[Result], info: dict, args, ratios: dict) -> str:
    variants = ratio_variants(ratios)
    head = ["target", "scenario", "req/s", "p50 ms", "p99 ms", "non-2xx", "code≠200", "socket errors",
            "server CPU s", "req/CPU-s", "RSS before→after MiB",
            *(f"{v}÷peer req/s, p99" for v in variants), "notes"]
    align = ["---", "---", *["--:"] * 8, "---", *["--:"] * len(variants), "---"]
    stage = fake_settings(args).get("KIE_MOCK_STAGE_DELAYS", "(kie-mock default)")
    ran = {r.target for r in results}
    setup = []
    if any(is_fake(t) for t in ran):
        setup.append(f"Fake: stage delays {stage} s (callbacks are scheduled on accept, none is due "
                     f"during the run){'; extra args ' + repr(args.fake_args) if args.fake_args else ''}.")
    if "prism" in ran:
        setup.append("Prism: " + ("spec as written (fires its callbacks)." if args.prism_callbacks
                                  else "spec with its callbacks stripped."))
    lines = [
        f"## kie-mock loopback benchmark ({info['started']})",
        "",
        f"Load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
        f"(+{args.warmup:g}s warm-up"
        + (f", Prism and WireMock +{args.peer_warmup:g}s" if ran & set(PEERS) else "")
        + f", --timeout {args.wrk_timeout:g}s, median of {args.repeat} run(s)), "
        + (f"one server at a time on {HOST}. " if not args.interleave else
           f"every server up on {HOST}, the runs taken in rounds (each round runs every target once, in turn). ")
        + f"Machine: nproc={info['nproc']}, {info.get('cpu_model') or '?'}, "
        f"{info.get('mem_total_gib')} GiB, load avg at start {info.get('loadavg')}, "
        f"Python {info['python']}, {info['platform']}; "
        f"{info.get('wrk') or 'wrk ?'}; node {info.get('node') or '-'}; {info.get('java') or 'java -'}.",
        "",
        *([" ".join(setup), ""] if setup else []),
        "| " + " | ".join(head) + " |",
        "|" + "|".join(align) + "|",
    ]
    for r in results:
        label = TARGET_LABEL[r.target] + (f" {r.server_version}" if r.server_version else "")
        scen = SCENARIO_LABEL[r.scenario]
        if r.status != "ok":
            cells = [label, scen, r.status, *[""] * (len(head) - 4), r.note]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        sock = sum(r.socket_errors.values()) if r.socket_errors else None
        rss = f"{_fmt(r.rss_before_mib, '.1f')}→{_fmt(r.rss_after_mib, '.1f')}"
        rps = _fmt(r.rps)
        if r.rps_runs and len(r.rps_runs) > 1:
            rps += f" ({min(r.rps_runs):,.0f}–{max(r.rps_runs):,.0f})"
        cells = [label, scen, rps, _fmt(r.p50_ms, '.2f'), _fmt(r.p99_ms, '.2f'),
                 _fmt(r.non_2xx, 'd'), _fmt(r.bad_code, 'd'), _fmt(sock, 'd'),
                 _fmt(r.server_cpu_s, '.1f'), _fmt(r.req_per_cpu_s), rss,
                 *(_ratio_cell(ratios, r, v) for v in variants),
                 "; ".join(x for x in (r.note, f"idle servers: {r.idle_peers_cpu_s:.1f} CPU-s"
                                       if r.idle_peers_cpu_s is not None else "") if x)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "non-2xx = responses with HTTP status >= 400 (wrk's count); code≠200 = 2xx responses "
        "whose JSON envelope `code` is not 200 (kie.ai reports errors as HTTP 200 + code); "
        "socket errors = connect+read+write+timeout. server CPU s = user+sys CPU time of the "
        "server's process tree during the measured run; req/CPU-s = requests / that (less "
        "sensitive than req/s to other load on the machine). RSS is the whole "
        "server process tree (VmRSS) just before and just after the measured run. "
        "idle servers (notes) = CPU time the other servers, up but not loaded, used during the "
        "reported run. "
        "Column \"V÷peer req/s, p99\", on a peer's row: fake variant V's req/s ÷ the peer's "
        "req/s (> 1: V is faster), then V's p99 ÷ the peer's p99 (< 1: V has the lower tail "
        "latency), same scenario; — on the fake rows, n/a where either side was not measured.",
        "",
        *render_targets(targets(results, ratios), ratios),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark kie-mock against Prism and WireMock with wrk on loopback.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", type=_csv((FAKE_ALIAS, *ALL_TARGETS)), default=[FAKE_ALIAS, *PEERS],
                   help=f"comma list of targets: {','.join(ALL_TARGETS)}, or {FAKE_ALIAS} "
                        f"(= every fake variant; {CUSTOM_FAKE} only with --fake-cmd)")
    p.add_argument("--scenarios", type=_csv(ALL_SCENARIOS), default=list(ALL_SCENARIOS),
                   help="comma list of scenarios: post,get")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    p.add_argument("--repeat", type=int, default=1,
                   help="measured runs per scenario; the median run (by req/s) is reported")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up seconds (0 = none)")
    p.add_argument("--peer-warmup", type=float, default=30.0,
                   help="unmeasured warm-up seconds for Prism and WireMock (JIT-compiled runtimes: "
                        "WireMock's JVM needs about 30 s of load to reach its steady speed)")
    p.add_argument("--interleave", action="store_true",
                   help="every server up at once, the measured runs taken in rounds that run every "
                        "target once, in turn (default: one server at a time, all its runs in a row)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--wrk-timeout", type=float, default=5.0, help="wrk --timeout seconds")
    p.add_argument("--no-body-check", dest="body_check", action="store_false",
                   help="skip the Lua response() check of the envelope code (a bit less wrk overhead)")
    p.add_argument("--fake-cmd", default=None,
                   help=f"defines the extra fake variant {CUSTOM_FAKE} running this command; "
                        "{port} {host} {python} are substituted")
    p.add_argument("--fake-args", default="", help="extra args appended to every fake variant's command")
    p.add_argument("--fake-env", action="append", default=[], metavar="K=V",
                   help="extra environment for every fake variant (repeatable)")
    p.add_argument("--api-key", default="kie-mock-key", help="bearer key sent with every request")
    p.add_argument("--spec", default=str(REPO_ROOT / "openapi.yaml"), help="OpenAPI document for Prism")
    cb = p.add_mutually_exclusive_group()
    cb.add_argument("--prism-no-callbacks", dest="prism_callbacks", action="store_false",
                    help="(the default) mock a copy of --spec without 'callbacks', so that Prism, like "
                         "the fake, is measured accepting requests, not delivering callbacks")
    cb.add_argument("--prism-callbacks", dest="prism_callbacks", action="store_true",
                    help="mock --spec as written: Prism fires the spec's callback on every request")
    p.set_defaults(prism_callbacks=False)
    p.add_argument("--prism-args", default="", help="extra args for 'prism mock'")
    p.add_argument("--wiremock-threads", type=int, default=32, help="WireMock --container-threads")
    p.add_argument("--java-opts", default="-Xms256m -Xmx512m", help="JVM options for WireMock")
    p.add_argument("--ready-timeout", type=float, default=90.0, help="readiness deadline per server (s)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="npm prefix and logs")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="never run apt-get/npm")
    p.add_argument("--json", type=Path, help="write results + machine info as JSON")
    p.add_argument("--markdown", type=Path, help="write the markdown report to this file")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``args.targets`` = the selected targets in run order."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.targets = resolve_targets(args.only, args.fake_cmd)
    except ValueError as exc:
        p.error(str(exc))
    return args


def fake_loaded_seconds(args) -> float:
    """About how long a fake variant is up and holding the tasks it accepted, while measured: its
    own runs, or with --interleave every target's warm-ups and runs."""
    if not args.interleave:
        return len(args.scenarios) * (args.warmup + args.duration * args.repeat)
    warmups = sum(args.warmup if is_fake(t) else args.peer_warmup for t in args.targets)
    return len(args.scenarios) * (warmups + len(args.targets) * args.duration * args.repeat)


def _first_stage_delay(args) -> float | None:
    try:
        return float(fake_settings(args).get("KIE_MOCK_STAGE_DELAYS", "").split(",")[0])
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.connections < args.threads:
        raise SystemExit("--connections must be >= --threads")
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    if args.duration <= 0:
        raise SystemExit("--duration must be > 0")
    args.cache_dir = args.cache_dir.resolve()
    per_server = fake_loaded_seconds(args)
    first = _first_stage_delay(args)
    if any(is_fake(t) for t in args.targets) and first is not None and per_server >= first:
        log(f"WARNING: a fake variant is loaded for about {per_server:g}s, longer than its first stage "
            f"delay ({first:g}s): callbacks fall due (and are delivered) during the measurement")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    run_dir = Path(tempfile.mkdtemp(prefix="kie-bench-"))
    results: list[Result] = []
    info: dict | None = None
    rc: int | None = None
    try:
        wrk = ensure_wrk(args.install)
        info = machine_info()
        info["started"] = started
        if not args.interleave:
            for target in args.targets:
                bench_target(target, args, wrk, run_dir, results)
        else:
            bench_interleaved(args.targets, args, wrk, run_dir, results)
    except Fatal as exc:
        log(f"FATAL: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted: killing subprocesses; reporting what was measured")
        rc = 130
    finally:
        kill_all()
    if info is None:
        return rc or 1
    order = {t: i for i, t in enumerate(args.targets)}  # the table's order, however they ran
    results.sort(key=lambda r: (order[r.target], args.scenarios.index(r.scenario)))
    ratios = add_ratios(results)
    report = render_markdown(results, info, args, ratios)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results],
            "fake_variants": {t: {"label": TARGET_LABEL[t],
                                  "command": fake_command(t, args) + (f" {args.fake_args}" if args.fake_args else ""),
                                  "env": fake_settings(args)}
                              for t in args.targets if is_fake(t)},
            "ratios_fake_over_peer": ratios,
            "targets_post": targets(results, ratios),
            "logs_dir": str(run_dir),
        }
        args.json.write_text(json.dumps(payload, indent=2))
        log(f"wrote {args.json}")
    log(f"server logs and wrk scripts: {run_dir}")
    if rc is not None:
        return rc
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
