"""Callback lateness end to end: `kie-mock serve`, callbacks over HTTP to a receiver process,
optionally while wrk keeps the API busy.

    python bench/lateness_http.py [--tasks 10000] [--spread 20] [--lead 30] [--load] [--all-stages]
                                  [--store memory|sqlite:PATH|redis://...] [--json FILE]

Starts the fake (default store unless --store) with its first stage `--lead` seconds after
acceptance, and a receiver (bench/receiver.py). Submits --tasks covers over HTTP, paced evenly
over --spread seconds, so that their text callbacks fall due evenly over --spread seconds, all
of them pending when the first falls due. With --load, wrk (-t2 -c32, POST upload-cover, the
same body as bench/run.py) runs from 2 s before the first falls due until 6 s after the last:
the API at full speed while the callbacks are due (their own callbacks fall due long after).
The receiver notes each callback's arrival; lateness is arrival minus the time the task's plan
had for it (GET /_mock/tasks/ID, read afterwards). With --all-stages each task's three callbacks
fall due (the full cost of a task). Prints delivered/expected, p50/p90/p99/max lateness in ms,
the fake's CPU per callback while they fell due, and wrk's requests per second. Callbacks not delivered within 8 s after the last
one fell due count as not delivered. Numbers, not assertions: see README "Benchmarks".
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: process handling, wrk)
from lateness import percentile  # noqa: E402  (bench/lateness.py)

GRACE = 8.0  # seconds after the last callback fell due that late ones still count


def lateness_ms(plan: dict, arrivals: list) -> list:
    """Sorted lateness in ms of each planned callback that arrived: plan {(task, stage): due},
    arrivals [(task, stage, time)]; a callback's first arrival counts (a retry or a duplicate
    once), arrivals not in the plan not at all."""
    first: dict = {}
    for task_id, kind, at in arrivals:
        if (task_id, kind) in plan:
            first[task_id, kind] = min(at, first.get((task_id, kind), at))
    return sorted((at - plan[k]) * 1000 for k, at in first.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--spread", type=float, default=20.0, help="seconds over which the text callbacks fall due")
    ap.add_argument("--lead", type=float, default=30.0,
                    help="seconds from a cover's acceptance to its text callback (> spread + 10)")
    ap.add_argument("--load", action="store_true", help="wrk keeps the API busy while the callbacks fall due")
    ap.add_argument("--all-stages", action="store_true",
                    help="every task's three callbacks fall due (text, then first 0.5 s and complete 1 s "
                         "later), not only text: the full cost of a task's callbacks")
    ap.add_argument("--store", help="--store for kie-mock serve (default: its default, a SQLite file)")
    ap.add_argument("--fake-cmd", default="kie-mock serve --port {port}",
                    help="command starting the fake ({port} substituted)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.lead < args.spread + 10:
        ap.error("--lead must be at least --spread + 10 (the load's own callbacks must fall due after the run)")

    run_dir = Path(tempfile.mkdtemp(prefix="kie-mock-lateness-"))
    try:
        figures = measure(args, run_dir)
    except bench.Unavailable as exc:
        print(f"lateness_http: {exc}", file=sys.stderr)
        return 2
    finally:
        bench.kill_all()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if figures["delivered"] == figures["expected"] else 1


def measure(args, run_dir: Path) -> dict:
    wrk_path = bench.ensure_wrk(install=True) if args.load else None
    receiver_port, fake_port = bench.free_port(), bench.free_port()
    arrivals_file = run_dir / "arrivals.json"
    receiver = bench.spawn([sys.executable, str(Path(__file__).with_name("receiver.py")), str(receiver_port),
                            str(arrivals_file)], run_dir / "receiver.log")
    env = bench.fake_env(argparse.Namespace(fake_env=[]))
    stages = ("text", "first", "complete") if args.all_stages else ("text",)
    env["KIE_MOCK_STAGE_DELAYS"] = (f"{args.lead:g},{args.lead + 0.5:g},{args.lead + 1:g}" if args.all_stages
                                    else f"{args.lead:g},3600,3601")
    argv = shlex.split(args.fake_cmd.format(port=fake_port)) + (["--store", args.store] if args.store else [])
    fake = bench.spawn(argv, run_dir / "fake.log", env=env, cwd=bench.REPO_ROOT)
    headers = {"Authorization": "Bearer kie-mock-key", "Content-Type": "application/json"}
    bench.wait_ready(fake, "fake", f"http://{bench.HOST}:{fake_port}/api/v1/chat/credit", headers,
                     lambda s: s == 200, 30, run_dir / "fake.log")

    conn = http.client.HTTPConnection(bench.HOST, fake_port, timeout=30)
    body = json.dumps(dict(bench.VALID_BODY, callBackUrl=f"http://127.0.0.1:{receiver_port}/cb"))
    ids, start = [], time.time()
    for i in range(args.tasks):
        pause = start + i * args.spread / args.tasks - time.time()
        if pause > 0:
            time.sleep(pause)
        conn.request("POST", "/api/v1/generate/upload-cover", body, headers)
        answer = json.loads(conn.getresponse().read())
        if answer.get("code") != 200:
            raise bench.Unavailable(f"the fake refused a cover: {answer}")
        ids.append(answer["data"]["taskId"])
    submitted = time.time() - start
    first_due, last_due = start + args.lead, start + args.lead + args.spread + (1 if args.all_stages else 0)

    cpu_before = bench.tree_cpu_seconds(fake.pid)
    load = None
    if args.load:
        script = run_dir / "post.lua"
        script.write_text(bench.lua_script("POST", headers, json.dumps(bench.VALID_BODY), check_body=False))
        time.sleep(max(0.0, first_due - 2 - time.time()))
        duration = round(last_due + 6 - time.time())  # whole seconds (wrk -d)
        load = bench.run_wrk(wrk_path, f"http://{bench.HOST}:{fake_port}/api/v1/generate/upload-cover", script,
                             duration, argparse.Namespace(threads=2, connections=32, wrk_timeout=5))[0]
    time.sleep(max(0.0, last_due + GRACE - time.time()))
    cpu = bench.tree_cpu_seconds(fake.pid) - cpu_before  # from the first due callback to the end
    bench.kill(receiver)  # SIGTERM: it writes what arrived

    plan = {}  # (task, stage) -> when its plan has the callback
    for task_id in ids:
        conn.request("GET", f"/_mock/tasks/{task_id}", headers=headers)
        for step in json.loads(conn.getresponse().read())["data"]["plan"]:
            if step["stage"] in stages:
                plan[task_id, step["stage"]] = step["at"]
    conn.close()
    bench.kill(fake)

    late = lateness_ms(plan, json.loads(arrivals_file.read_text()))
    return {
        "tasks": args.tasks, "stages": list(stages), "expected": len(plan), "delivered": len(late),
        "store": args.store or "default (SQLite file)",
        "fake": args.fake_cmd, "spread_s": args.spread, "submit_seconds": round(submitted, 2),
        # CPU of the fake's processes while the callbacks fell due, per callback (API load included)
        "fake_cpu_ms_per_callback": round(1000 * cpu / len(late), 3) if late else None,
        "load": None if load is None else {
            "requests_per_second": round(load["requests"] / (load["duration_us"] / 1e6)),
            "p99_ms": round(load["latency_us"]["p99"] / 1000, 2)},
        "lateness_ms": {p: round(percentile(late, int(p[1:])), 2) if late else None for p in ("p50", "p90", "p99")}
        | {"max": round(late[-1], 2) if late else None},
    }


if __name__ == "__main__":
    sys.exit(main())
