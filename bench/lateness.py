"""Callback lateness with many tasks pending: how late (actual - scheduled) each callback fires.

    python bench/lateness.py [--tasks 10000] [--spread 20] [--store memory|sqlite:PATH|redis://...]

Creates --tasks tasks as upload-cover does and schedules them through the fake's store and
scheduler (no HTTP server: only the scheduler is measured), with their text stage spread
uniformly over --spread seconds after a lead time, then records,
for every text-stage delivery, the wall time it was handed to the (instant, in-process)
receiver minus the time the plan had for it. Prints p50/p90/p99/max lateness in ms and the
process's peak RSS. Numbers, not assertions: see README "Benchmarks".
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mock_server import lifecycle  # noqa: E402
from mock_server.app import create_app  # noqa: E402
from mock_server.config import Config  # noqa: E402
from mock_server.delivery import Attempt  # noqa: E402
from mock_server.scenarios import Scenario  # noqa: E402


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--spread", type=float, default=20.0, help="seconds over which first stages fall due")
    ap.add_argument("--lead", type=float, default=None, help="seconds before the first is due (default: time to submit)")
    ap.add_argument("--store", default="memory")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)

    plan_at: dict[str, float] = {}
    late: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def deliver(url, data, headers):
        now = time.time()
        payload = json.loads(data)
        if payload["data"]["callbackType"] == "text":
            with lock:
                late.append(now - plan_at[payload["data"]["task_id"]])
                if len(late) >= args.tasks:
                    done.set()
        return Attempt(200, None, 0.0)

    lead = args.lead if args.lead is not None else max(5.0, args.tasks / 2000)
    cfg = Config(store=args.store, rate_limit=0, api_keys={"bench": 10**12}, stage_delays=(lead, 3600, 3601),
                 journal_limit=1000)
    app = create_app(cfg, deliver=deliver)
    svc = app.extensions["kie_mock"]
    body = {"uploadUrl": "https://storage.example.com/upload", "prompt": "calm piano", "customMode": False,
            "instrumental": False, "model": "V3_5", "callBackUrl": "http://127.0.0.1:9/cb"}
    start = time.time()
    rng = random.Random(7)
    for _ in range(args.tasks):
        # A task as upload-cover makes it, with its text stage at a random time in the spread
        # (and no later stages), scheduled through the same store and scheduler.
        task = lifecycle.new_task(body, "bench", start, cfg, "http://127.0.0.1:8787", Scenario(), 12)
        at = start + lead + rng.uniform(0, args.spread)
        task["plan"] = [{"stage": "text", "at": at}]
        svc.store.put_task(task)
        svc.scheduler.submit(task)
        plan_at[task["taskId"]] = at
    submitted = time.time() - start
    pending = len(svc.store.list_jobs())
    done.wait(lead + args.spread + 60)
    svc.scheduler.stop()
    values = sorted(x * 1000 for x in late)
    figures = {
        "tasks": args.tasks, "pending_at_start": pending, "delivered": len(values), "store": args.store,
        "submit_seconds": round(submitted, 2),
        "lateness_ms": {p: round(percentile(values, int(p[1:])), 2) for p in ("p50", "p90", "p99")}
        | {"max": round(values[-1], 2) if values else None},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if len(values) == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
