"""Kill -9 during load, restart on the same store: nothing acknowledged is lost.

A two-worker server on a sqlite file, short stage delays, many concurrent submissions and
callbacks in flight; the whole process group gets SIGKILL; a new server starts on the same
file. Then every task that was acknowledged (200 + taskId) is known to record-info, and every
callback that fell due is delivered at least once, always with the same payload.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import urllib3

from conftest import body
from test_workers import RECORD, get_json, post_cover, receiver, serve, wait_for  # noqa: F401 (fixture)

ENV = {
    "KIE_MOCK_STAGE_DELAYS": "0.3,0.6,0.9",
    "KIE_MOCK_RETRY_DELAYS": "0.2,0.4,0.8",
    "KIE_MOCK_RATE_LIMIT": "0",
    "KIE_MOCK_RECORD_INFO_PER_SECOND": "0",
    "KIE_MOCK_CREDITS": "1000000",
    # A job leased by a killed worker is taken over when its lease ends: timeout * 2 + 5 = 7 s.
    "KIE_MOCK_CALLBACK_TIMEOUT": "1",
}
SUBMITTERS, PER_SUBMITTER = 8, 25


def test_sigkill_during_load_loses_no_acknowledged_task_and_no_due_callback(tmp_path, receiver):
    store = f"sqlite:{tmp_path / 'crash.sqlite'}"
    acked: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    with serve("--workers", "2", "--store", store, env=ENV) as server:
        def submitter():
            for _ in range(PER_SUBMITTER):
                if killed.is_set() and server.proc.poll() is not None:
                    return
                try:
                    status, env = post_cover(server.base, body(callBackUrl=receiver.url))
                except (urllib3.exceptions.HTTPError, ValueError) as exc:  # the server died under us
                    with lock:
                        failed.append(repr(exc))
                    continue
                if status == 200 and env.get("code") == 200 and env.get("data", {}).get("taskId"):
                    with lock:
                        acked.append(env["data"]["taskId"])

        threads = [threading.Thread(target=submitter) for _ in range(SUBMITTERS)]
        for t in threads:
            t.start()
        # Kill once submissions and callbacks are both under way.
        wait_for("submissions and callbacks under way",
                 lambda: len(acked) >= 40 and len(receiver.calls) >= 10, timeout=60, every=0.01)
        killed.set()
        server.kill()
        for t in threads:
            t.join(60)
        before_restart = len(receiver.calls)

    assert len(acked) >= 40
    with serve("--workers", "2", "--store", store, env=ENV) as again:
        for tid in acked:  # every acknowledged task survived
            info = get_json(again.base, f"{RECORD}?taskId={tid}")
            assert info["code"] == 200 and info["data"]["taskId"] == tid, (tid, info)

        for tid in acked:  # every stage's callback falls due and is delivered, at least once
            wait_for(f"all three callbacks of {tid}",
                     lambda: {"text", "first", "complete"} <= set(receiver.stages(tid)), timeout=90)
        for tid in acked:
            info = get_json(again.base, f"{RECORD}?taskId={tid}")
            assert info["data"]["status"] == "SUCCESS", (tid, info["data"]["status"])

    payloads: dict[tuple[str, str], list[dict]] = defaultdict(list)
    with receiver.lock:
        for tid, stage, data in receiver.calls:
            payloads[(tid, stage)].append(data)
    for (tid, stage), bodies in payloads.items():
        assert all(b == bodies[0] for b in bodies), f"{stage} callback of {tid} changed between deliveries"
        assert bodies[0]["data"]["task_id"] == tid and bodies[0]["data"]["callbackType"] == stage
    # The restart did real work: callbacks kept coming after it.
    assert len(receiver.calls) > before_restart

