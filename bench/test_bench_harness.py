"""Quick checks of bench/run.py's plumbing (no npm, no JVM; wrk only if installed).

    python -m pytest -q bench/test_bench_harness.py
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = run
_spec.loader.exec_module(run)

STUB = r'''
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def _send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(200 if code == 200 or self.path.endswith("soft") else code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers(); self.wfile.write(b)
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer kie-mock-key"
        self._send(200 if ok else 401, {"code": 200 if ok else 401, "msg": "m", "data": 1})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, {"code": 200, "msg": "success", "data": {"taskId": "t1"}})
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


@pytest.fixture
def stub(tmp_path):
    script = tmp_path / "stub.py"
    script.write_text(STUB)
    port = run.free_port()
    proc = run.spawn([sys.executable, str(script), str(port)], tmp_path / "stub.log")
    try:
        run.wait_ready(proc, "stub", f"http://127.0.0.1:{port}/api/v1/chat/credit",
                       {"Authorization": "Bearer kie-mock-key"}, lambda s: s == 200, 20,
                       tmp_path / "stub.log")
        yield proc, port
    finally:
        run.kill(proc)


def test_lua_string_quoting_survives_brackets():
    assert run._lua_str("a]=]b") == "[==[a]=]b]==]"
    script = run.lua_script("POST", {"Authorization": "Bearer k"}, '{"x":"]]"}')
    assert "wrk.headers[ [=[Authorization]=] ]" in script
    assert "wrk.body = [=[{\"x\":\"]]\"}]=]" in script
    assert "function response" in script
    assert "function response" not in run.lua_script("GET", {}, None, check_body=False)


def test_parse_wrk_and_fill_stats():
    out = ('Running 1s test\nWRK_JSON {"duration_us":2000000,"requests":1000,"bytes":5,"bad_code":3,'
           '"errors":{"connect":0,"read":1,"write":0,"status":7,"timeout":2},'
           '"latency_us":{"min":10,"mean":1.5,"stdev":1,"max":9000,"p50":1500,"p75":2000,'
           '"p90":2500,"p99":8000,"p99_9":8900}}\n')
    res = run.Result("prism", "post", "ok")
    run.fill_stats(res, run.parse_wrk(out))
    assert (res.rps, res.p50_ms, res.p99_ms, res.non_2xx, res.bad_code) == (500.0, 1.5, 8.0, 7, 3)
    assert res.socket_errors == {"connect": 0, "read": 1, "write": 0, "timeout": 2}
    with pytest.raises(ValueError):
        run.parse_wrk("no json here")


def _ok(target, scen, rps, p99):
    return run.Result(target, scen, "ok", rps=rps, p99_ms=p99, non_2xx=0, bad_code=0,
                      socket_errors={"connect": 0})


def test_ratios_per_fake_variant():
    rs = [_ok("fake-memory", "post", 400.0, 5.0), _ok("fake-memory", "get", 900.0, 2.0),
          _ok("fake-sqlite", "post", 200.0, 10.0),
          run.Result("fake-sqlite", "get", "error", note="boom"),
          run.Result("fake-sqlite-2w", "post", "unavailable", note="nope"),
          _ok("prism", "post", 100.0, 20.0), _ok("prism", "get", 300.0, 4.0),
          run.Result("wiremock", "post", "unavailable", note="java not found on PATH")]
    ratios = run.add_ratios(rs)
    assert ratios == {
        "post": {"fake-memory": {"prism": {"rps": 4.0, "p99": 0.25}},
                 "fake-sqlite": {"prism": {"rps": 2.0, "p99": 0.5}}},
        "get": {"fake-memory": {"prism": {"rps": 3.0, "p99": 0.5}}},
    }
    assert run.ratio_variants(ratios) == ["fake-memory", "fake-sqlite"]
    # no peer measured -> no ratios (and no ratio columns)
    assert run.add_ratios([_ok("fake-memory", "post", 1.0, 1.0)]) == {}


def _post(target, rps, p99, before, after, **kw):
    return run.Result(target, "post", "ok", rps=rps, p99_ms=p99, rss_before_mib=before, rss_after_mib=after,
                      non_2xx=0, bad_code=0, **kw)


def test_targets_judged_at_their_boundaries():
    rs = [_post("fake-memory", 200.0, 29.9, 100.0, 116.0),  # exactly 2x Prism, = WireMock, growth at the bound
          _post("fake-sqlite", 199.99, 30.0, 100.0, 116.01),  # just below / at / just above each bound
          _post("fake-sqlite-2w", 300.0, 5.0, None, None),  # no memory figures: not judged
          _post("prism", 100.0, 20.0, 0, 0), _post("wiremock", 200.0, 50.0, 0, 0)]
    got = run.targets(rs, run.add_ratios(rs))
    assert got["fake-memory"] == {"prism_2x": True, "wiremock_1x": True, "p99_under_30ms": True,
                                  "memory_flat": True, "all": True, "error_answers": False, "rss_growth_mib": 16.0}
    assert got["fake-sqlite"] == {"prism_2x": False, "wiremock_1x": False, "p99_under_30ms": False,
                                  "memory_flat": False, "all": False, "error_answers": False,
                                  "rss_growth_mib": 16.01}  # 1.9999x: not rounded up to 2
    assert got["fake-sqlite-2w"]["memory_flat"] is None and got["fake-sqlite-2w"]["all"] is None
    assert set(got) == {"fake-memory", "fake-sqlite", "fake-sqlite-2w"}
    no_peers = run.targets(rs[:1], run.add_ratios(rs[:1]))["fake-memory"]
    assert no_peers["prism_2x"] is None and no_peers["wiremock_1x"] is None and no_peers["all"] is None
    table = "\n".join(run.render_targets(got, run.add_ratios(rs)))
    assert "| kie-mock, SQLite (default) | **no** (2.00×) | **no** (1.00×) | **no** | **no** (+16.01 MiB) | **no** |" in table


def test_a_failed_check_makes_all_false_even_when_another_is_unknown():
    rs = [_post("fake-sqlite", 150.0, 5.0, None, None), _post("prism", 100.0, 20.0, 0, 0)]
    got = run.targets(rs, run.add_ratios(rs))["fake-sqlite"]
    assert got["prism_2x"] is False and got["memory_flat"] is None and got["all"] is False


@pytest.mark.parametrize("errors", [{"non_2xx": 1}, {"bad_code": 1}])
def test_a_fast_run_of_error_answers_meets_no_target(errors):
    fake = _post("fake-memory", 1000.0, 1.0, 100.0, 100.0)
    for k, v in errors.items():
        setattr(fake, k, v)
    rs = [fake, _post("prism", 100.0, 20.0, 0, 0), _post("wiremock", 100.0, 20.0, 0, 0)]
    got = run.targets(rs, run.add_ratios(rs))["fake-memory"]
    assert got["error_answers"] and got["all"] is False
    assert not any(got[k] for k in ("prism_2x", "wiremock_1x", "p99_under_30ms", "memory_flat"))
    assert "error answers" in "\n".join(run.render_targets({"fake-memory": got}, run.add_ratios(rs)))


def test_markdown_one_ratio_column_per_fake_variant():
    rs = [_ok("fake-memory", "post", 400.0, 5.0), _ok("fake-sqlite", "post", 200.0, 10.0),
          _ok("fake-memory", "get", 900.0, 2.0),
          run.Result("fake-sqlite-2w", "post", "unavailable", note="nope"),
          _ok("prism", "post", 100.0, 20.0), _ok("prism", "get", 300.0, 4.0),
          run.Result("wiremock", "post", "unavailable", note="java not found on PATH")]
    ratios = run.add_ratios(rs)
    args = run.parse_args([])
    info = dict(run.machine_info(), started="now")
    md = run.render_markdown(rs, info, args, ratios)
    main, _, verdicts = md.partition("### Targets")
    table = [line for line in main.splitlines() if line.startswith("|")]
    assert "| kie-mock, memory store | yes (4.00×) | n/a |" in verdicts  # WireMock was not measured
    header = table[0].split(" | ")
    assert "fake-memory÷peer req/s, p99" in header and "fake-sqlite÷peer req/s, p99" in header
    assert not any("fake-sqlite-2w÷peer" in h for h in header)  # nothing measured: no column
    ncols = table[0].count("|")
    assert all(line.count("|") == ncols for line in table), "every row has the header's column count"
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
            for line in table[2:]}
    prism_post = rows[("Prism", "POST upload-cover")]
    assert prism_post[2] == "100" and prism_post[-3:-1] == ["4.00×, 0.25×", "2.00×, 0.50×"]
    prism_get = rows[("Prism", "GET record-info")]
    assert prism_get[-3:-1] == ["3.00×, 0.50×", "n/a"]  # fake-sqlite has no GET row
    assert rows[("kie-mock, memory store", "POST upload-cover")][-3:-1] == ["—", "—"]
    assert rows[("kie-mock, SQLite, 2 workers", "POST upload-cover")][2] == "unavailable"
    assert "java not found" in md and "600,900,1200" in md and "callbacks stripped" in md
    md = run.render_markdown(rs[:1], info, args, {})
    assert "600,900,1200" in md and "Prism:" not in md


def test_cli_selectors():
    args = run.parse_args(["--only", "prism,wiremock", "--fake-args=--instant"])
    assert args.targets == ["prism", "wiremock"] and args.fake_args == "--instant"
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nginx"])
    # default: every built-in fake variant, then the peers
    assert run.parse_args([]).targets == ["fake-memory", "fake-sqlite", "fake-sqlite-2w",
                                          "prism", "wiremock"]
    # the alias, in run order whatever the order given
    assert run.parse_args(["--only", "wiremock,fake"]).targets == [
        "fake-memory", "fake-sqlite", "fake-sqlite-2w", "wiremock"]
    assert run.parse_args(["--only", "fake-sqlite-2w,fake-memory"]).targets == [
        "fake-memory", "fake-sqlite-2w"]
    # --fake-cmd adds fake-custom to the alias; alone with --only fake-custom
    custom = ["--fake-cmd", "{python} -m mock_server serve --port {port}"]
    assert run.parse_args(custom + ["--only", "fake"]).targets[-1] == "fake-custom"
    assert run.parse_args(custom + ["--only", "fake-custom"]).targets == ["fake-custom"]
    assert "fake-custom" not in run.parse_args(custom + ["--only", "fake-memory"]).targets
    with pytest.raises(SystemExit):  # fake-custom without --fake-cmd
        run.parse_args(["--only", "fake-custom"])
    # Prism runs without callbacks unless asked
    assert run.parse_args([]).prism_callbacks is False
    assert run.parse_args(["--prism-no-callbacks"]).prism_callbacks is False
    assert run.parse_args(["--prism-callbacks"]).prism_callbacks is True
    with pytest.raises(SystemExit):
        run.parse_args(["--prism-callbacks", "--prism-no-callbacks"])


def test_fake_variant_commands_and_env(monkeypatch):
    args = run.parse_args(["--fake-args=--transport status", "--fake-env", "KIE_MOCK_CREDITS=5"])
    assert run.fake_command("fake-memory", args) == "kie-mock serve --port {port} --store memory"
    assert run.fake_command("fake-sqlite", args) == "kie-mock serve --port {port}"
    assert run.fake_command("fake-sqlite-2w", args) == "kie-mock serve --port {port} --workers 2"
    monkeypatch.setenv("KIE_MOCK_STORE", "memory")  # inherited: must not turn fake-sqlite into memory
    monkeypatch.setenv("KIE_MOCK_BENCH_UNRELATED_OK", "x")
    env = run.fake_env(args)
    assert "KIE_MOCK_STORE" not in env and "KIE_MOCK_BENCH_UNRELATED_OK" not in env
    assert env["KIE_MOCK_STAGE_DELAYS"] == "600,900,1200" and env["KIE_MOCK_RATE_LIMIT"] == "0"
    assert env["KIE_MOCK_CREDITS"] == "5" and env["PATH"] == run.os.environ["PATH"]
    assert run._first_stage_delay(args) == 600.0


def test_spawn_ready_rss_and_kill(stub):
    proc, port = stub
    assert run.tree_rss_mib(proc.pid) > 1
    status, _ = run.http("GET", f"http://127.0.0.1:{port}/x")
    assert status == 401
    run.kill(proc)
    assert proc.poll() is not None and proc not in run._PROCS


def test_readiness_timeout_is_clear(tmp_path):
    proc = run.spawn([sys.executable, "-c", "import time; print('booting', flush=True); time.sleep(60)"],
                     tmp_path / "slow.log")
    try:
        with pytest.raises(run.Unavailable, match="(?s)not ready after 1s.*booting"):
            run.wait_ready(proc, "slow", f"http://127.0.0.1:{run.free_port()}/", {},
                           lambda s: True, 1, tmp_path / "slow.log")
    finally:
        run.kill(proc)
    proc = run.spawn([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "dead.log")
    with pytest.raises(run.Unavailable, match="exited with code 3"):
        run.wait_ready(proc, "dead", "http://127.0.0.1:9/", {}, lambda s: True, 10,
                       tmp_path / "dead.log")
    run.kill(proc)


def test_missing_fake_is_unavailable(tmp_path):
    args = run.parse_args(["--fake-cmd", "no-such-kie-mock-binary --port {port}"])
    results = run.bench_target("fake-custom", args, "wrk", tmp_path)
    assert [r.status for r in results] == ["unavailable", "unavailable"]
    assert all(r.target == "fake-custom" and "not found on PATH" in r.note for r in results)


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed")
def test_wrk_end_to_end_against_stub(stub, tmp_path):
    _, port = stub
    args = run.build_parser().parse_args(["--duration", "1", "--connections", "4"])
    headers = {"Authorization": "Bearer kie-mock-key", "Content-Type": "application/json"}
    script = tmp_path / "post.lua"
    script.write_text(run.lua_script("POST", headers, '{"a":1}'))
    stats, _ = run.run_wrk(shutil.which("wrk"), f"http://127.0.0.1:{port}/api/v1/generate/upload-cover",
                             script, 1, args)
    assert stats["requests"] > 0 and stats["errors"]["status"] == 0 and stats["bad_code"] == 0
    # bad bearer key: HTTP 401 counted by wrk as status errors
    script.write_text(run.lua_script("GET", {"Authorization": "Bearer nope"}, None))
    stats, _ = run.run_wrk(shutil.which("wrk"), f"http://127.0.0.1:{port}/x", script, 1, args)
    assert stats["errors"]["status"] == stats["requests"] > 0
    # HTTP 200 + envelope code 401: counted by the Lua response() hook
    stats, _ = run.run_wrk(shutil.which("wrk"), f"http://127.0.0.1:{port}/soft", script, 1, args)
    assert stats["bad_code"] == stats["requests"] > 0 and stats["errors"]["status"] == 0


def test_runs_are_taken_in_rounds_over_every_target(monkeypatch, tmp_path):
    """--interleave: every target up, then per scenario one measured run of each target per
    round; the results come out in target order all the same. The default: one at a time."""
    calls = []

    class Proc:
        pid = 0

        def poll(self):
            return None

    def start(target, args, run_dir):
        return run.Server(target, Proc(), 1000 + len(calls), ["srv", target], tmp_path / "x.log", 0.1)

    def wrk(wrk_path, url, script, duration, args):
        calls.append((script.name, duration))
        stats = {"requests": 100, "duration_us": 1_000_000, "bad_code": 0,
                 "latency_us": {"p50": 1000, "p90": 2000, "p99": 3000, "p99_9": 4000, "max": 5000},
                 "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}}
        return stats, "raw"

    monkeypatch.setattr(run, "start_target", start)
    monkeypatch.setattr(run, "run_wrk", wrk)
    monkeypatch.setattr(run, "http", lambda *a, **k: (200, b'{"code":200,"data":{"taskId":"t"}}'))
    monkeypatch.setattr(run, "kill", lambda proc: None)
    monkeypatch.setattr(run, "tree_rss_mib", lambda pid: 1.0)
    cpu = iter(range(1000))  # every reading of any server's CPU time is 1 s later than the last
    monkeypatch.setattr(run, "tree_cpu_seconds", lambda pid: float(next(cpu)))
    args = run.parse_args(["--only", "prism,wiremock", "--repeat", "2", "--duration", "3", "--peer-warmup", "1",
                           "--interleave"])
    results = run.bench_interleaved(args.targets, args, "wrk", tmp_path, [])
    assert calls == [("prism-post.lua", 1), ("wiremock-post.lua", 1),  # warm-ups
                     ("prism-post.lua", 3), ("wiremock-post.lua", 3),  # round 1
                     ("prism-post.lua", 3), ("wiremock-post.lua", 3),  # round 2
                     ("prism-get.lua", 1), ("wiremock-get.lua", 1),
                     ("prism-get.lua", 3), ("wiremock-get.lua", 3),
                     ("prism-get.lua", 3), ("wiremock-get.lua", 3)]
    assert [(r.target, r.scenario, r.status, r.rps_runs) for r in results] == [
        ("prism", "post", "ok", [100.0, 100.0]), ("wiremock", "post", "ok", [100.0, 100.0]),
        ("prism", "get", "ok", [100.0, 100.0]), ("wiremock", "get", "ok", [100.0, 100.0])]
    # per run: others read (t), self (t+1), self (t+2), others (t+3): the idle server used 3 "s"
    assert {(r.server_cpu_s, r.idle_peers_cpu_s) for r in results} == {(1.0, 3.0)}
    calls.clear()
    args = run.parse_args(["--only", "prism,wiremock", "--repeat", "2", "--duration", "3", "--peer-warmup", "1"])
    assert not args.interleave and args.warmup == 2.0
    results = []
    for t in args.targets:
        run.bench_target(t, args, "wrk", tmp_path, results)
    assert [c[0] for c in calls] == ["prism-post.lua"] * 3 + ["prism-get.lua"] * 3 + \
        ["wiremock-post.lua"] * 3 + ["wiremock-get.lua"] * 3


def test_an_interrupted_interleaved_run_marks_what_was_open_and_keeps_the_table_order(monkeypatch, tmp_path):
    class Proc:
        pid = 0

        def poll(self):
            return None

    n = [0]

    def wrk(wrk_path, url, script, duration, args):
        n[0] += 1
        if n[0] == 4:  # wiremock's first measured POST run: Ctrl-C
            raise KeyboardInterrupt
        return ({"requests": 100, "duration_us": 1_000_000, "bad_code": 0,
                 "latency_us": {"p50": 1000, "p90": 2000, "p99": 3000, "p99_9": 4000, "max": 5000},
                 "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}}, "raw")

    monkeypatch.setattr(run, "start_target", lambda t, a, d: run.Server(t, Proc(), 1, [t], tmp_path / "x.log", 0.1))
    monkeypatch.setattr(run, "run_wrk", wrk)
    monkeypatch.setattr(run, "http", lambda *a, **k: (200, b'{"code":200,"data":{"taskId":"t"}}'))
    monkeypatch.setattr(run, "kill", lambda proc: None)
    monkeypatch.setattr(run, "tree_rss_mib", lambda pid: 1.0)
    monkeypatch.setattr(run, "tree_cpu_seconds", lambda pid: 0.0)
    args = run.parse_args(["--only", "prism,wiremock", "--interleave", "--scenarios", "post"])
    results = []
    import pytest

    with pytest.raises(KeyboardInterrupt):
        run.bench_interleaved(args.targets, args, "wrk", tmp_path, results)
    # prism had measured its run but was not finished: interrupted too, never an "ok" row without figures
    assert [(r.target, r.status, r.note) for r in results] == [("prism", "error", "interrupted"),
                                                               ("wiremock", "error", "interrupted")]


def test_the_fake_is_warned_about_when_loaded_past_its_first_stage_delay():
    args = run.parse_args(["--duration", "30", "--repeat", "3"])
    assert run.fake_loaded_seconds(args) == 2 * (2 + 90)  # alone: its own warm-ups and runs
    args = run.parse_args(["--duration", "30", "--repeat", "3", "--interleave"])
    # up while every target warms up and runs: 3 fakes (2 s) + 2 peers (30 s), 5 targets x 90 s
    assert run.fake_loaded_seconds(args) == 2 * (3 * 2 + 2 * 30 + 5 * 90) > 600


def _lateness_module():
    spec = importlib.util.spec_from_file_location("bench_lateness_http", Path(__file__).with_name("lateness_http.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lateness_counts_each_planned_callback_once_at_its_first_arrival():
    lateness_ms = _lateness_module().lateness_ms
    plan = {("t1", "text"): 100.0, ("t1", "first"): 101.0, ("t2", "text"): 100.5}
    arrivals = [("t1", "text", 100.25), ("t1", "text", 100.05),  # a duplicate, arrived first
                ("t1", "first", 101.002), ("t2", "complete", 105.0),  # not planned: not counted
                ("t3", "text", 100.0), (None, None, 100.0)]
    assert lateness_ms(plan, arrivals) == pytest.approx([2.0, 50.0])
    assert lateness_ms(plan, []) == []


def test_the_receiver_records_each_callback_and_answers_200(tmp_path):
    import json
    import signal
    import urllib.request

    port, out = run.free_port(), tmp_path / "arrivals.json"
    proc = run.spawn([sys.executable, str(Path(__file__).with_name("receiver.py")), str(port), str(out)],
                     tmp_path / "receiver.log")
    try:
        def post(body: bytes):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/cb", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()

        for _ in range(100):
            try:
                assert post(b'{"data": {"task_id": "t1", "callbackType": "text"}}') == (200, b"{}")
                break
            except OSError:
                import time
                time.sleep(0.05)
        assert post(b"not json") == (200, b"{}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        run._PROCS.remove(proc)
    got = json.loads(out.read_text())
    assert [(t, k) for t, k, _ in got] == [("t1", "text"), (None, None)]
