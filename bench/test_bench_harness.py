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


def test_ratios_and_markdown():
    rs = [run.Result("fake", "post", "ok", rps=200.0, p99_ms=10.0, non_2xx=0, bad_code=0,
                     socket_errors={"connect": 0}),
          run.Result("prism", "post", "ok", rps=100.0, p99_ms=20.0, non_2xx=0, bad_code=0,
                     socket_errors={"connect": 0}),
          run.Result("wiremock", "post", "unavailable", note="java not found on PATH")]
    ratios = run.add_ratios(rs)
    assert ratios == {"post": {"prism": {"rps": 2.0, "p99": 0.5}}}
    args = run.build_parser().parse_args([])
    info = dict(run.machine_info(), started="now")
    md = run.render_markdown(rs, info, args, ratios)
    assert "| Prism | POST upload-cover | 100 |" in md and "2.00×" in md and "0.50×" in md
    assert "unavailable" in md and "java not found" in md


def test_cli_selectors():
    args = run.build_parser().parse_args(["--only", "prism,wiremock", "--fake-args=--instant"])
    assert args.only == ["prism", "wiremock"] and args.fake_args == "--instant"
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--only", "nginx"])


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
    args = run.build_parser().parse_args(["--fake-cmd", "no-such-kie-mock-binary --port {port}"])
    results = run.bench_target("fake", args, "wrk", tmp_path)
    assert [r.status for r in results] == ["unavailable", "unavailable"]


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
