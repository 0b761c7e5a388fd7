"""One conformance suite for every store backend: memory, sqlite (a file, and ":memory:"), redis.

Each verb of `stores/base.Store`, and its atomicity promises under concurrency: threads for
every backend, processes for the backends that processes share (a sqlite file, redis).

Redis runs against the real server that `.ci/services.sh` starts (KIE_MOCK_TEST_REDIS_URL);
each test works under its own key prefix. Without that variable the redis cases fail under
CI=true (a CI that silently skipped them would prove nothing) and skip elsewhere.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import uuid

import pytest

from mock_server.stores import open_store

REDIS_URL = os.environ.get("KIE_MOCK_TEST_REDIS_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ALL = ["memory", "sqlite-file", "sqlite-memory", "redis"]
SHARED = ["sqlite-file", "redis"]  # backends several processes can share


def need_redis() -> str:
    if REDIS_URL:
        return REDIS_URL
    msg = ("KIE_MOCK_TEST_REDIS_URL is not set: the redis store is tested against a real redis-server. "
           "Run `source .ci/services.sh` (it installs and starts one) or point the variable at a server.")
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def store_url(kind: str, tmp_path) -> str:
    if kind == "memory":
        return "memory"
    if kind == "sqlite-file":
        return f"sqlite:{tmp_path / 'store.sqlite'}"
    if kind == "sqlite-memory":
        return "sqlite::memory:"
    if kind == "redis":
        sep = "&" if "?" in need_redis() else "?"
        return f"{REDIS_URL}{sep}prefix=kie-mock-test:{uuid.uuid4().hex[:12]}:"
    raise AssertionError(kind)


@pytest.fixture(params=ALL)
def url(request, tmp_path):
    return store_url(request.param, tmp_path)


@pytest.fixture
def store(url):
    s = open_store(url)
    s.reset()
    yield s
    s.reset()
    s.close()


@pytest.fixture(params=SHARED)
def shared_url(request, tmp_path):
    u = store_url(request.param, tmp_path)
    yield u
    s = open_store(u)
    s.reset()
    s.close()


def task(task_id: str, key: str = "k1", status: str = "PENDING", expires_at: float = 2000.0, **extra) -> dict:
    return {"taskId": task_id, "key": key, "status": status, "expires_at": expires_at, "created_at": 1.5,
            "param": '{"model":"V3_5"}', "tracks": [{"id": "t1", "duration": 198.44, "tags": None}],
            "plan": [{"stage": "text", "at": 2.0}], "errorCode": None, "refunded": False, **extra}


def job(job_id: str, task_id: str = "t", due: float = 10.0, **extra) -> dict:
    return {"id": job_id, "task_id": task_id, "kind": "stage", "due": due, "index": 0, **extra}


# -- accounts --------------------------------------------------------------------------------------
def test_accounts_put_get_list_delete(store):
    assert store.get_account("nobody") is None
    store.put_account("a", 100)
    store.put_account("b", 5, "hmac-secret")
    assert store.get_account("a") == {"key": "a", "credits": 100, "hmac_key": None}
    assert store.get_account("b") == {"key": "b", "credits": 5, "hmac_key": "hmac-secret"}
    assert [a["key"] for a in store.list_accounts()] == ["a", "b"]
    store.put_account("a", 7)  # overwrite: balance set, nothing duplicated
    assert store.get_account("a")["credits"] == 7
    assert len(store.list_accounts()) == 2
    assert store.delete_account("a") is True
    assert store.delete_account("a") is False
    assert store.get_account("a") is None
    assert [a["key"] for a in store.list_accounts()] == ["b"]


def test_charge_and_refund(store):
    store.put_account("a", 30)
    assert store.charge("a", 12) == 18
    assert store.charge("a", 12) == 6
    assert store.charge("a", 12) is None  # short: nothing taken
    assert store.get_account("a")["credits"] == 6
    assert store.charge("a", 6) == 0
    assert store.charge("a", 1) is None
    assert store.charge("a", 0) == 0  # a free cover (cover_cost 0) fits an empty balance
    assert store.refund("a", 12) == 12
    assert store.charge("nobody", 1) is None
    assert store.refund("nobody", 1) is None
    assert store.get_account("nobody") is None


def test_accept_charges_stores_and_schedules_together_or_not_at_all(store):
    store.put_account("a", 24)
    assert store.accept("a", 12, task("t1", key="a"), job("j1", "t1", due=2.0)) == 12
    assert store.get_task("t1")["key"] == "a"
    assert [j["id"] for j in store.list_jobs("t1")] == ["j1"]
    assert store.accept("a", 12, task("t2", key="a"), job("j2", "t2", due=3.0)) == 0  # at the balance
    assert store.accept("a", 1, task("t3", key="a"), job("j3", "t3", due=4.0)) is None  # one above
    assert store.get_task("t3") is None and store.list_jobs("t3") == []  # nothing of it was kept
    assert store.get_account("a")["credits"] == 0
    assert store.accept("nobody", 0, task("t4", key="nobody"), job("j4", "t4")) is None
    assert store.get_task("t4") is None
    assert [t["taskId"] for t in store.list_tasks()] == ["t2", "t1"]
    assert [j["id"] for j in store.claim_due(10.0, "w", 30.0)] == ["j1", "j2"]


def test_accept_many_answers_each_item_on_its_own(store):
    store.put_account("a", 24)
    bad = task("t4", key="a", unserializable={1, 2})  # JSON has no sets: storing it raises
    out = store.accept_many([
        ("a", 12, task("t1", key="a"), job("j1", "t1")),
        ("a", 12, task("t2", key="a"), job("j2", "t2")),  # at the balance
        ("a", 1, task("t3", key="a"), job("j3", "t3")),  # one above
        ("a", 0, bad, job("j4", "t4")),
        ("nobody", 0, task("t5", key="nobody"), job("j5", "t5")),
        ("a", 0, task("t6", key="a"), job("j6", "t6")),  # free: still fits at 0
    ])
    assert out[:3] == [12, 0, None] and isinstance(out[3], Exception) and out[4:] == [None, 0]
    assert [t["taskId"] for t in store.list_tasks()] == ["t6", "t2", "t1"]
    assert sorted(j["id"] for j in store.list_jobs()) == ["j1", "j2", "j6"]
    assert store.get_account("a")["credits"] == 0
    assert store.accept_many([]) == []


def test_accept_many_charges_a_key_once_for_items_that_all_fit_with_per_item_balances(store):
    store.put_account("a", 100)
    store.put_account("b", 5)
    out = store.accept_many([(k, cost, task(f"t{i}", key=k), job(f"j{i}", f"t{i}"))
                             for i, (k, cost) in enumerate([("a", 12), ("b", 3), ("a", 0), ("a", 12)])])
    assert out == [88, 2, 88, 76]  # what charging them one after the other gives
    assert store.get_account("a")["credits"] == 76 and store.get_account("b")["credits"] == 2
    assert len(store.list_tasks()) == 4 and len(store.list_jobs()) == 4


def test_prelude_reads_account_settings_and_armed_fault_kinds(store):
    assert store.prelude("a") == (None, {}, frozenset())
    store.put_account("a", 7, "hk")
    store.put_account("b", 1)
    assert store.prelude("a") == ({"key": "a", "credits": 7, "hmac_key": "hk"}, {}, frozenset())
    store.update_settings({"maintenance": True, "latency": {"ms": 5}})
    store.arm_fault({"id": "f1", "kind": "code", "key": "*", "count": 1, "code": 500})
    store.arm_fault({"id": "f2", "kind": "scenario", "key": "b", "count": 2, "scenario": "late-failure"})
    account, settings, armed = store.prelude("a")
    assert settings == {"maintenance": True, "latency": {"ms": 5}}
    assert armed == {"code"}  # b's scenario is not a's
    assert store.prelude("b")[2] == {"code", "scenario"}
    store.take_fault("a", "code")
    assert store.prelude("a")[2] == frozenset() and store.prelude("b")[2] == {"scenario"}


# -- rate windows -------------------------------------------------------------------------------
def test_rate_window_admits_limit_then_refuses_until_a_slot_frees(store):
    tokens = []
    for i in range(3):
        ok, wait, token = store.rate_acquire("cover:a", 100.0 + i, 3, 10.0)
        assert ok and wait == 0.0 and token
        tokens.append(token)
    assert len(set(tokens)) == 3
    ok, wait, token = store.rate_acquire("cover:a", 105.0, 3, 10.0)
    assert (ok, token) == (False, "")
    assert wait == pytest.approx(5.0)  # the first entry (at 100) leaves the window at 110
    assert store.rate_acquire("cover:b", 105.0, 3, 10.0)[0]  # buckets are independent
    ok, _, _ = store.rate_acquire("cover:a", 110.0, 3, 10.0)  # 100 + 10: the first slot is free
    assert ok
    assert not store.rate_acquire("cover:a", 110.5, 3, 10.0)[0]


def test_try_rate_acquire_is_rate_acquire_when_nobody_else_writes(store):
    got = [store.try_rate_acquire("cover:a", 100.0 + i, 2, 10.0) for i in range(3)]
    assert [g[0] for g in got] == [True, True, False] and got[2][1] == pytest.approx(8.0)  # 100 + 10 - 102
    store.rate_release("cover:a", got[0][2])
    assert store.try_rate_acquire("cover:a", 103.0, 2, 10.0)[0]


def test_rate_release_gives_the_slot_back(store):
    ok, _, t1 = store.rate_acquire("poll:x", 50.0, 2, 1.0)
    ok2, _, _ = store.rate_acquire("poll:x", 50.1, 2, 1.0)
    assert ok and ok2
    assert not store.rate_acquire("poll:x", 50.2, 2, 1.0)[0]
    store.rate_release("poll:x", t1)
    store.rate_release("poll:x", "not-a-token")  # unknown tokens are ignored
    assert store.rate_acquire("poll:x", 50.3, 2, 1.0)[0]
    assert not store.rate_acquire("poll:x", 50.4, 2, 1.0)[0]


# -- tasks -------------------------------------------------------------------------------------------
def test_tasks_roundtrip_update_and_copies(store):
    assert store.get_task("nope") is None
    t = task("t1")
    store.put_task(t)
    got = store.get_task("t1")
    assert got == t
    got["tracks"][0]["id"] = "mutated"  # a copy: the store is not changed through it
    t["status"] = "mutated"
    assert store.get_task("t1")["tracks"][0]["id"] == "t1"
    assert store.get_task("t1")["status"] == "PENDING"

    changes = {"status": "TEXT_SUCCESS", "stage": "text", "errorCode": None, "completed_at": 12.25}
    updated = store.update_task("t1", changes)
    assert updated["status"] == "TEXT_SUCCESS" and updated["stage"] == "text" and updated["completed_at"] == 12.25
    assert updated["tracks"] == task("t1")["tracks"]  # a merge: untouched fields kept
    assert store.get_task("t1") == updated
    assert store.update_task("nope", {"status": "X"}) is None
    assert store.get_task("nope") is None

    store.put_task(task("t1", status="SUCCESS"))  # put replaces
    assert store.get_task("t1")["status"] == "SUCCESS" and "stage" not in store.get_task("t1")


def test_refund_task_gives_the_credits_back_once_with_the_update(store):
    store.put_account("a", 10)
    store.put_task(task("t1", key="a"))
    changes = {"status": "GENERATE_AUDIO_FAILED", "errorCode": 531, "stage_index": 1}
    got = store.refund_task("t1", changes, 12)
    assert got["refunded"] is True and got["status"] == "GENERATE_AUDIO_FAILED" and got["stage_index"] == 1
    assert got["tracks"] == task("t1")["tracks"]  # a merge, as update_task
    assert store.get_task("t1") == got
    assert store.get_account("a")["credits"] == 22
    again = store.refund_task("t1", {"status": "CALLBACK_EXCEPTION"}, 12)  # e.g. the job run again
    assert again["status"] == "CALLBACK_EXCEPTION" and again["refunded"] is True
    assert store.get_account("a")["credits"] == 22  # not twice
    assert store.refund_task("nope", changes, 12) is None
    assert store.get_account("a")["credits"] == 22
    assert store.get_task("nope") is None
    store.put_task(task("t2", key="gone"))  # its account was deleted: the task is still updated
    assert store.refund_task("t2", {"status": "GENERATE_AUDIO_FAILED"}, 12)["refunded"] is True
    assert store.get_account("gone") is None
    store.put_task(task("t3", key="a", refunded=True))  # already refunded (by an earlier run)
    assert store.refund_task("t3", {"stage": "first"}, 12)["stage"] == "first"
    assert store.get_account("a")["credits"] == 22


def test_list_tasks_newest_first_with_filters(store):
    for i in range(5):
        store.put_task(task(f"t{i}", key="k1" if i % 2 == 0 else "k2", status="SUCCESS" if i < 2 else "PENDING"))
    assert [t["taskId"] for t in store.list_tasks()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [t["taskId"] for t in store.list_tasks(limit=2)] == ["t4", "t3"]
    assert [t["taskId"] for t in store.list_tasks(key="k1")] == ["t4", "t2", "t0"]
    assert [t["taskId"] for t in store.list_tasks(status="SUCCESS")] == ["t1", "t0"]
    assert [t["taskId"] for t in store.list_tasks(key="k2", status="PENDING")] == ["t3"]
    store.update_task("t4", {"status": "SUCCESS"})
    assert [t["taskId"] for t in store.list_tasks(status="SUCCESS")] == ["t4", "t1", "t0"]


def test_purge_tasks_by_expiry(store):
    store.put_task(task("old", expires_at=100.0))
    store.put_task(task("edge", expires_at=200.0))
    store.put_task(task("new", expires_at=300.0))
    assert store.purge_tasks(200.0) == 2
    assert store.get_task("old") is None and store.get_task("edge") is None
    assert store.get_task("new") is not None
    assert [t["taskId"] for t in store.list_tasks()] == ["new"]
    assert store.purge_tasks(200.0) == 0


# -- jobs --------------------------------------------------------------------------------------------
def test_jobs_claim_lease_finish(store):
    store.add_job(job("j1", "t1", due=10.0, stage="text", attempt=0))
    store.add_job(job("j2", "t1", due=20.0))
    store.add_job(job("j3", "t2", due=5.0))
    assert store.next_due() == 5.0
    assert store.claim_due(4.9, "w1", 30.0) == []
    claimed = store.claim_due(10.0, "w1", 30.0)
    assert [j["id"] for j in claimed] == ["j3", "j1"]
    j1 = claimed[1]
    assert (j1["owner"], j1["lease_until"], j1["task_id"], j1["due"]) == ("w1", 40.0, "t1", 10.0)
    assert (j1["stage"], j1["attempt"], j1["kind"]) == ("text", 0, "stage")  # extra fields kept
    assert store.claim_due(10.0, "w2", 30.0) == []  # held by w1
    assert store.next_due() == 20.0
    store.finish_job("j3")
    store.finish_job("j3")  # twice is harmless
    assert [j["id"] for j in store.list_jobs()] == ["j1", "j2"]
    assert [j["id"] for j in store.list_jobs("t1")] == ["j1", "j2"]
    assert store.list_jobs("t2") == []
    listed = store.list_jobs("t1")[0]
    assert (listed["owner"], listed["lease_until"]) == ("w1", 40.0)
    assert store.list_jobs("t1")[1]["owner"] is None


def test_the_jobs_of_a_task_follow_adds_replacements_finishes_and_resets(store):
    """list_jobs(task) and reschedule_jobs(task) read a per-task index in some stores: it follows
    every change of the jobs."""
    store.add_job(job("a", "t1", due=50.0))
    store.add_job(job("b", "t1", due=60.0))
    store.add_job(job("a", "t2", due=70.0))  # the same id again, for another task: replaced
    assert [j["id"] for j in store.list_jobs("t1")] == ["b"]
    assert [(j["id"], j["due"]) for j in store.list_jobs("t2")] == [("a", 70.0)]
    assert store.reschedule_jobs("t1", 10.0) == 1 and store.list_jobs("t2")[0]["due"] == 70.0
    store.finish_job("b")
    assert store.list_jobs("t1") == [] and store.reschedule_jobs("t1", 1.0) == 0
    store.put_account("k1", 10)
    assert store.accept_many([("k1", 1, task("t3"), job("c", "t3", due=80.0))]) == [9]
    assert [j["id"] for j in store.list_jobs("t3")] == ["c"]
    store.reset()
    assert store.list_jobs("t2") == [] and store.list_jobs("t3") == []


def test_claim_due_limit_and_order(store):
    for i in range(10):
        store.add_job(job(f"j{i}", due=float(100 - i)))
    first = store.claim_due(1000.0, "w", 60.0, limit=4)
    assert [j["id"] for j in first] == ["j9", "j8", "j7", "j6"]
    rest = store.claim_due(1000.0, "w", 60.0, limit=100)
    assert [j["id"] for j in rest] == ["j5", "j4", "j3", "j2", "j1", "j0"]


def test_expired_lease_lets_another_claimant_take_the_job(store):
    store.add_job(job("j1", due=10.0))
    assert [j["id"] for j in store.claim_due(10.0, "dead-worker", 5.0)] == ["j1"]
    assert store.next_due() == 15.0
    assert store.claim_due(14.99, "w2", 5.0) == []
    taken = store.claim_due(15.0, "w2", 5.0)
    assert [(j["id"], j["owner"], j["lease_until"]) for j in taken] == [("j1", "w2", 20.0)]
    assert store.claim_due(15.0, "dead-worker", 5.0) == []


def test_reschedule_jobs_moves_only_unclaimed_later_jobs(store):
    store.add_job(job("a", "t1", due=50.0))
    store.add_job(job("b", "t1", due=80.0))
    store.add_job(job("c", "t1", due=5.0))
    store.add_job(job("other", "t2", due=90.0))
    assert [j["id"] for j in store.claim_due(5.0, "w", 100.0)] == ["c"]
    assert store.reschedule_jobs("t1", 20.0) == 2  # a, b (c is held)
    assert store.reschedule_jobs("t1", 20.0) == 0
    assert {j["id"]: j["due"] for j in store.list_jobs("t1")} == {"a": 20.0, "b": 20.0, "c": 5.0}
    assert [j["id"] for j in store.claim_due(20.0, "w", 100.0)] == ["a", "b"]
    assert store.list_jobs("t2")[0]["due"] == 90.0


# -- journals --------------------------------------------------------------------------------------
def test_journals_are_bounded_newest_first_and_filterable(store):
    for i in range(15):
        store.log("attempts", {"task_id": f"t{i % 3}", "n": i, "ok": i % 2 == 0}, 10)
    store.log("requests", {"path": "/x"}, 10)
    entries = store.read_log("attempts", limit=100)
    assert [e["n"] for e in entries] == list(range(14, 4, -1))  # the 10 newest, newest first
    assert [e["n"] for e in store.read_log("attempts", limit=3)] == [14, 13, 12]
    assert [e["n"] for e in store.read_log("attempts", task_id="t1")] == [13, 10, 7]
    assert [e["n"] for e in store.read_log("attempts", task_id="t1", ok=True)] == [10]
    assert [e["n"] for e in store.read_log("attempts", limit=2, task_id=None)] == [14, 13]  # None: any
    assert store.read_log("requests") == [{"path": "/x"}]
    assert store.read_log("nothing") == []


def test_log_many_appends_in_order_and_keeps_the_bound(store):
    store.log("requests", {"n": 0}, 5)
    store.log_many("requests", [{"n": i} for i in range(1, 8)], 5)
    assert [e["n"] for e in store.read_log("requests")] == [7, 6, 5, 4, 3]
    store.log_many("requests", [], 5)
    store.log("requests", {"n": 8}, 5)
    assert [e["n"] for e in store.read_log("requests")] == [8, 7, 6, 5, 4]


# -- faults -----------------------------------------------------------------------------------------
def test_faults_consumed_once_oldest_first(store):
    assert store.take_fault("k1", "code") is None
    store.arm_fault({"id": "f1", "key": "k1", "kind": "code", "code": 500, "count": 2})
    store.arm_fault({"id": "f2", "key": "*", "kind": "code", "code": 455, "count": 1})
    store.arm_fault({"id": "f3", "key": "*", "kind": "scenario", "scenario": "error", "count": 1})
    assert [(f["id"], f["count"]) for f in store.list_faults()] == [("f1", 2), ("f2", 1), ("f3", 1)]
    got = store.take_fault("k1", "code")
    assert (got["id"], got["code"], got["count"]) == ("f1", 500, 1)
    assert store.take_fault("k2", "code")["id"] == "f2"  # k1's fault is not k2's; "*" is everyone's
    assert store.take_fault("k2", "code") is None
    assert store.take_fault("k1", "code")["count"] == 0
    assert store.take_fault("k1", "code") is None
    assert [f["id"] for f in store.list_faults()] == ["f3"]
    store.clear_faults()
    assert store.list_faults() == [] and store.take_fault("k1", "scenario") is None


# -- settings and reset ---------------------------------------------------------------------------------
def test_settings_merge(store):
    assert store.get_settings() == {}
    assert store.update_settings({"rate_limit": 5, "maintenance": True}) == {"rate_limit": 5, "maintenance": True}
    assert store.update_settings({"maintenance": False, "latency": {"ms": 10}}) == {
        "rate_limit": 5, "maintenance": False, "latency": {"ms": 10}}
    assert store.get_settings()["latency"] == {"ms": 10}


def test_claim_setting_sets_only_once_and_tells_who_did(store):
    assert store.claim_setting("_seeded", True) is True
    assert store.claim_setting("_seeded", False) is False
    assert store.get_settings() == {"_seeded": True}
    store.reset()
    assert store.claim_setting("_seeded", True) is True


def test_raise_setting_keeps_the_larger_number(store):
    assert store.raise_setting("_clock_now", 100.5) == 100.5
    assert store.raise_setting("_clock_now", 10.0) == 100.5  # never back
    assert store.raise_setting("_clock_now", 1795684890.3861883) == 1795684890.3861883  # full precision
    assert store.get_settings()["_clock_now"] == 1795684890.3861883


def test_claim_and_raise_are_atomic_across_threads(shared_url):
    """One of many claims wins; the largest of many raises stays, whatever the interleaving."""
    stores = [open_store(shared_url) for _ in range(8)]
    try:
        stores[0].reset()
        start = threading.Barrier(len(stores))
        claimed, raised = [], []

        def one(i, s):
            start.wait(10)
            claimed.append(s.claim_setting("_seeded", i))
            for v in range(i, 200, len(stores)):
                raised.append(s.raise_setting("_clock_now", float(v)))

        threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(claimed) == [False] * 7 + [True]
        assert stores[0].get_settings()["_clock_now"] == 199.0 and max(raised) == 199.0
    finally:
        for s in stores:
            s.close()


def test_reset_forgets_everything(store):
    store.put_account("a", 1)
    store.rate_acquire("cover:a", 1.0, 1, 100.0)
    store.put_task(task("t1"))
    store.add_job(job("j1"))
    store.log("attempts", {"n": 1}, 10)
    store.arm_fault({"id": "f", "key": "*", "kind": "code", "code": 500, "count": 1})
    store.update_settings({"x": 1})
    store.reset()
    assert store.list_accounts() == [] and store.get_task("t1") is None and store.list_tasks() == []
    assert store.list_jobs() == [] and store.next_due() is None and store.claim_due(1e12, "w", 1) == []
    assert store.read_log("attempts") == [] and store.list_faults() == [] and store.get_settings() == {}
    assert store.rate_acquire("cover:a", 1.0, 1, 100.0)[0]


def test_redis_reset_only_deletes_its_own_prefix():
    url = store_url("redis", None)
    import redis

    from mock_server.stores.redis import split_url

    plain, _ = split_url(url)
    client = redis.Redis.from_url(plain)
    foreign = f"not-kie-mock:{uuid.uuid4().hex}"
    client.set(foreign, "keep me")
    try:
        s = open_store(url)
        s.put_account("a", 1)
        s.reset()
        assert s.list_accounts() == []
        assert client.get(foreign) == b"keep me"
    finally:
        client.delete(foreign)
        client.close()


def test_redis_reset_leaves_a_deployment_whose_prefix_extends_ours_and_leaves_none_of_ours():
    """Two deployments on one Redis, "P" and "P teamb:": a reset of the first used to delete
    every key matching "P*", the second's accounts and tasks included."""
    import redis

    from mock_server.stores.redis import split_url

    url = store_url("redis", None)
    plain, _ = split_url(url)
    ours, theirs = open_store(url), open_store(url[:-1] + ":teamb:")
    client = redis.Redis.from_url(plain)
    try:
        for s in (ours, theirs):
            s.put_account("a", 5)
            s.rate_acquire("cover:a", 1.0, 1, 100.0)
            s.put_task(task("t1"))
            s.add_job(job("j1", "t1"))
            s.claim_due(1e12, "w", 10)
            s.log("attempts", {"n": 1}, 10)
            s.arm_fault({"id": "f", "key": "*", "kind": "code", "code": 500, "count": 1})
            s.update_settings({"x": 1})
        before = set(client.scan_iter(match=theirs.prefix + "*"))
        ours.reset()
        assert set(client.scan_iter(match=ours.prefix + "*")) == before  # none of ours is left
        assert theirs.get_account("a")["credits"] == 5 and theirs.get_task("t1") is not None
        assert len(theirs.list_faults()) == 1 and theirs.get_settings() == {"x": 1}
    finally:
        theirs.reset()
        client.close()


def test_state_survives_reopening(shared_url):
    s = open_store(shared_url)
    s.reset()
    s.put_account("a", 40)
    s.charge("a", 12)
    s.put_task(task("t1"))
    s.add_job(job("j1", "t1", due=3.0))
    s.log("attempts", {"n": 1}, 10)
    s.close()
    again = open_store(shared_url)
    assert again.get_account("a")["credits"] == 28
    assert again.get_task("t1") == task("t1")
    assert [j["id"] for j in again.claim_due(3.0, "w", 10.0)] == ["j1"]
    assert again.read_log("attempts") == [{"n": 1}]
    again.close()


def test_prelude_sees_every_change_made_through_another_handle(shared_url):
    """Two handles on one shared store are two processes' views: whatever one changes (key,
    settings, armed faults), the other's next prelude shows, even if it had read the prelude
    before (a backend may cache it, but never past a change)."""
    a, b = open_store(shared_url), open_store(shared_url)
    try:
        a.reset()
        assert a.prelude("k") == (None, {}, frozenset())
        b.put_account("k", 10, "hk")
        assert a.prelude("k")[0] == {"key": "k", "credits": 10, "hmac_key": "hk"}
        b.update_settings({"maintenance": True})
        assert a.prelude("k")[1] == {"maintenance": True}
        b.arm_fault({"id": "f1", "kind": "code", "key": "k", "count": 2, "code": 500})
        assert a.prelude("k")[2] == {"code"}
        assert b.take_fault("k", "code")["count"] == 1
        assert a.prelude("k")[2] == {"code"}  # one use left
        assert b.take_fault("k", "code")["count"] == 0
        assert a.prelude("k")[2] == frozenset()
        b.arm_fault({"id": "f2", "kind": "scenario", "key": "*", "count": 1, "scenario": "late-failure"})
        assert a.prelude("k")[2] == {"scenario"}
        b.clear_faults()
        assert a.prelude("k")[2] == frozenset()
        b.put_account("k", 10, "other")
        assert a.prelude("k")[0]["hmac_key"] == "other"
        assert b.delete_account("k")
        assert a.prelude("k") == (None, {}, frozenset())
        b.put_account("k", 3)
        b.update_settings({"latency": {"ms": 1}})
        assert a.prelude("k")[1] == {"maintenance": True, "latency": {"ms": 1}}
        b.reset()
        assert a.prelude("k") == (None, {}, frozenset())
        assert b.prelude("k") == (None, {}, frozenset())  # and the other way round, b having read first
        a.put_account("k", 4)
        assert b.prelude("k")[0]["credits"] == 4
    finally:
        a.close()
        b.close()


def test_sqlite_prelude_is_read_once_until_a_change_or_its_time_runs_out(tmp_path, monkeypatch):
    from mock_server.stores import sqlite as sqlite_store

    path = tmp_path / "store.sqlite"
    s = open_store(f"sqlite:{path}")
    reads = []
    real = s._read_prelude
    monkeypatch.setattr(s, "_read_prelude", lambda key: reads.append(key) or real(key))
    s.put_account("k", 5)
    first = s.prelude("k")
    assert s.prelude("k") == first and s.prelude("k") == first
    assert reads == ["k"]  # cached: one read for three requests
    s.prelude("other")
    assert reads == ["k", "other"]  # per key
    s.update_settings({"maintenance": True})  # a change through the store: read again at once
    assert s.prelude("k")[1] == {"maintenance": True} and reads == ["k", "other", "k"]
    # A writer that does not stamp (another program, a process killed between its commit and
    # its stamp) is seen once the cached prelude is PRELUDE_TTL old.
    import sqlite3
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO settings (k, v) VALUES ('latency', '{\"ms\":2}')")
    raw.commit()
    raw.close()
    assert s.prelude("k")[1] == {"maintenance": True}  # still the cached copy
    read_at = s._preludes["k"][1]
    monkeypatch.setattr(sqlite_store, "_monotonic", lambda: read_at + sqlite_store.PRELUDE_TTL - 0.001)
    assert s.prelude("k")[1] == {"maintenance": True}  # just under its time: still cached
    later = read_at + sqlite_store.PRELUDE_TTL
    monkeypatch.setattr(sqlite_store, "_monotonic", lambda: later)
    assert s.prelude("k")[1] == {"maintenance": True, "latency": {"ms": 2}}
    s.close()


def test_sqlite_prelude_stamp_is_shared_through_a_symlinked_path(tmp_path):
    (tmp_path / "real").mkdir()
    a = open_store(f"sqlite:{tmp_path / 'real' / 'store.sqlite'}")
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "real" / "store.sqlite")
    b = open_store(f"sqlite:{tmp_path / 'link.sqlite'}")
    try:
        assert b.prelude("k") == (None, {}, frozenset())
        a.put_account("k", 1)
        a.update_settings({"maintenance": True})
        assert b.prelude("k")[:2] == ({"key": "k", "credits": 1, "hmac_key": None}, {"maintenance": True})
        assert not (tmp_path / "link.sqlite-gen").exists()
    finally:
        a.close()
        b.close()


def test_sqlite_store_without_its_stamp_file_works_uncached(tmp_path, capsys):
    path = tmp_path / "store.sqlite"
    (tmp_path / "store.sqlite-gen").mkdir()  # cannot be opened as the stamp file
    a, b = open_store(f"sqlite:{path}"), open_store(f"sqlite:{path}")
    try:
        assert "the prelude is read for every request" in capsys.readouterr().err
        assert b.prelude("k") == (None, {}, frozenset())
        a.put_account("k", 2)
        a.arm_fault({"id": "f", "kind": "code", "key": "*", "count": 1, "code": 500})
        assert b.prelude("k") == ({"key": "k", "credits": 2, "hmac_key": None}, {}, frozenset({"code"}))
    finally:
        a.close()
        b.close()


def test_sqlite_prelude_cache_is_bounded(tmp_path, monkeypatch):
    from mock_server.stores import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "PRELUDE_CACHE_KEYS", 8)
    s = open_store(f"sqlite:{tmp_path / 'store.sqlite'}")
    for i in range(100):  # e.g. a flood of unknown keys
        assert s.prelude(f"nobody-{i}") == (None, {}, frozenset())
        assert len(s._preludes) <= 8
    s.close()


# -- concurrency: threads (every backend) ------------------------------------------------------------------
def run_threads(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def body(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def charge_until_empty(store, amount: int = 3) -> list[int]:
    balances = []
    while True:
        left = store.charge("shared", amount)
        if left is None:
            return balances
        balances.append(left)


def test_threads_charge_takes_exactly_the_credits(store):
    store.put_account("shared", 3 * 400 + 2)
    results = run_threads(8, lambda i: charge_until_empty(store))
    balances = [b for r in results for b in r]
    assert len(balances) == 400  # exactly the available credits were taken
    assert all(b >= 0 for b in balances)
    assert sorted(balances) == list(range(2, 3 * 400, 3))  # each balance seen once: no lost update
    assert store.get_account("shared")["credits"] == 2


def test_threads_accept_never_overdraws_and_keeps_every_task_it_charged_for(store):
    store.put_account("shared", 5 * 120 + 4)

    def acceptor(i):
        got = []
        for n in range(40):
            tid = f"w{i}-{n}"
            if store.accept("shared", 5, task(tid, key="shared"), job("j" + tid, tid)) is not None:
                got.append(tid)
        return got

    accepted = [t for r in run_threads(8, acceptor) for t in r]
    assert len(accepted) == 120
    assert store.get_account("shared")["credits"] == 4
    assert all(store.get_task(t) is not None for t in accepted)
    assert len(store.list_jobs()) == 120 and len(store.list_tasks(limit=1000)) == 120


def test_threads_refund_task_refunds_once(store):
    store.put_account("a", 0)
    store.put_task(task("t1", key="a"))
    run_threads(8, lambda i: store.refund_task("t1", {"stage": f"s{i}"}, 12))
    assert store.get_account("a")["credits"] == 12 and store.get_task("t1")["refunded"] is True


def test_threads_rate_window_admits_exactly_limit(store):
    results = run_threads(8, lambda i: [store.rate_acquire("cover:k", 100.0, 20, 10.0)[0] for _ in range(10)])
    assert sum(ok for r in results for ok in r) == 20


def test_threads_each_job_claimed_once(store):
    for i in range(300):
        store.add_job(job(f"j{i}", due=float(i % 7)))

    def claimant(i):
        got = []
        while True:
            jobs = store.claim_due(100.0, f"w{i}", 600.0, limit=5)
            if not jobs:
                return got
            got += [j["id"] for j in jobs]

    ids = [jid for r in run_threads(8, claimant) for jid in r]
    assert sorted(ids) == sorted(f"j{i}" for i in range(300))


def test_threads_take_fault_consumes_each_count_once(store):
    store.arm_fault({"id": "f", "key": "*", "kind": "code", "code": 500, "count": 60})

    def taker(i):
        n = 0
        while store.take_fault("k", "code") is not None:
            n += 1
        return n

    assert sum(run_threads(8, taker)) == 60
    assert store.list_faults() == []


# -- concurrency: processes (backends that processes share) -----------------------------------------------------
_BARRIER = None  # the children's barrier, for functions that move in lockstep


def _proc_main(fn_name: str, url: str, idx: int, barrier, out) -> None:
    global _BARRIER
    _BARRIER = barrier
    try:
        s = open_store(url)
        barrier.wait(timeout=60)
        out.put((idx, "ok", globals()[fn_name](s, idx)))
        s.close()
    except BaseException as exc:  # reported to the parent
        out.put((idx, "error", repr(exc)))


def run_procs(n: int, fn_name: str, url: str) -> list:
    # forkserver: the processes come from a clean one. A plain fork of this test process could
    # copy a lock held by one of its threads (an earlier test's scheduler inside SQLite) into a
    # child where nobody releases it.
    ctx = multiprocessing.get_context("forkserver")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_proc_main, args=(fn_name, url, i, barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(n):
            idx, status, value = out.get(timeout=120)
            assert status == "ok", f"process {idx}: {value}"
            results[idx] = value
    except queue.Empty:
        raise AssertionError("a store process did not report within 120 s") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[i] for i in range(n)]


def _p_charge(s, idx):
    return charge_until_empty(s)


def _p_rate(s, idx):
    return [s.rate_acquire("cover:k", 100.0, 20, 10.0)[0] for _ in range(15)]


def _p_claim(s, idx):
    got = []
    while True:
        jobs = s.claim_due(100.0, f"proc{idx}", 600.0, limit=5)
        if not jobs:
            return got
        got += [j["id"] for j in jobs]


def _p_fault(s, idx):
    n = 0
    while s.take_fault("k", "code") is not None:
        n += 1
    return n


def _p_lease(s, idx):
    # Every process tries the same job at the same moments: inside, then past, the first lease.
    steps = []
    for now in (10.0, 15.0, 20.0):
        steps.append([j["owner"] for j in s.claim_due(now, f"proc{idx}", 10.0)])
        _BARRIER.wait(timeout=60)
    return steps


def test_processes_charge_takes_exactly_the_credits(shared_url):
    s = open_store(shared_url)
    s.reset()
    s.put_account("shared", 3 * 300 + 1)
    balances = [b for r in run_procs(4, "_p_charge", shared_url) for b in r]
    assert len(balances) == 300 and all(b >= 0 for b in balances)
    assert sorted(balances) == list(range(1, 3 * 300, 3))
    assert s.get_account("shared")["credits"] == 1


def _p_refund(s, idx):
    return [s.refund_task(f"t{i}", {"stage": f"p{idx}"}, 12) is not None for i in range(50)]


def test_processes_refund_task_refunds_each_task_once(shared_url):
    s = open_store(shared_url)
    s.reset()
    s.put_account("a", 0)
    for i in range(50):
        s.put_task(task(f"t{i}", key="a"))
    assert all(ok for r in run_procs(4, "_p_refund", shared_url) for ok in r)
    assert s.get_account("a")["credits"] == 50 * 12


def test_processes_rate_window_admits_exactly_limit(shared_url):
    s = open_store(shared_url)
    s.reset()
    admitted = sum(ok for r in run_procs(4, "_p_rate", shared_url) for ok in r)
    assert admitted == 20


def test_processes_each_job_claimed_once(shared_url):
    s = open_store(shared_url)
    s.reset()
    for i in range(200):
        s.add_job(job(f"j{i}", due=float(i % 5)))
    ids = [jid for r in run_procs(4, "_p_claim", shared_url) for jid in r]
    assert sorted(ids) == sorted(f"j{i}" for i in range(200))


def test_processes_take_fault_consumes_each_count_once(shared_url):
    s = open_store(shared_url)
    s.reset()
    s.arm_fault({"id": "f", "key": "*", "kind": "code", "code": 500, "count": 50})
    assert sum(run_procs(4, "_p_fault", shared_url)) == 50


def test_processes_an_expired_lease_is_taken_over_by_exactly_one(shared_url):
    s = open_store(shared_url)
    s.reset()
    s.add_job(job("j", due=10.0))
    results = run_procs(4, "_p_lease", shared_url)
    at10, at15, at20 = ([owner for r in results for owner in r[step]] for step in range(3))
    assert len(at10) == 1  # one claimant holds it until 20
    assert at15 == []  # inside the lease: nobody else
    assert len(at20) == 1  # the lease ran out: exactly one claimant took it over
    assert s.list_jobs()[0]["owner"] == at20[0] and s.list_jobs()[0]["lease_until"] == 30.0


def _fork_after_opening(path: str, out) -> None:
    """In a clean process (no other thread uses SQLite: the condition for a safe fork): open the
    store, use it, fork, and have the child use it too."""
    try:
        s = open_store(f"sqlite:{path}")
        s.put_account("a", 100)
        assert s.charge("a", 10) == 90  # the parent has open connections and a checkpoint thread now
        ctx = multiprocessing.get_context("fork")
        child_out = ctx.Queue()
        p = ctx.Process(target=_charge_in_child, args=(s, child_out))
        p.start()
        in_child = child_out.get(timeout=60)
        p.join(30)
        out.put(("ok", in_child, s.get_account("a")["credits"], s.charge("a", 10)))
        s.close()
    except BaseException as exc:
        out.put(("error", repr(exc), None, None))


def _charge_in_child(s, out) -> None:
    try:
        out.put(("ok", s.charge("a", 10), s.get_account("a")["credits"]))
    except BaseException as exc:
        out.put(("error", repr(exc), None))


def test_a_sqlite_store_opened_before_a_fork_works_in_the_child(tmp_path):
    """A WSGI server may fork after the store was opened: the child must not reuse the parent's
    connections (SQLite forbids it) and still sees and changes the same file. (Run from a
    forkserver process: this test process has other tests' threads, which a fork must not copy.)"""
    ctx = multiprocessing.get_context("forkserver")
    out = ctx.Queue()
    p = ctx.Process(target=_fork_after_opening, args=(str(tmp_path / "fork.sqlite"), out))
    p.start()
    status, in_child, seen_after, charged_after = out.get(timeout=90)
    p.join(30)
    assert status == "ok", in_child
    assert in_child == ("ok", 80, 80)
    assert (seen_after, charged_after) == (80, 70)


def test_sqlite_group_commit_isolates_a_failing_write(tmp_path):
    """Writes queued together share one transaction, each in its own savepoint: one that fails
    is undone alone and reports its own error; the others commit."""
    from mock_server.stores.sqlite import _Pending

    s = open_store(f"sqlite:{tmp_path / 'batch.sqlite'}")
    s.put_account("a", 10)

    def bad(conn):
        conn.execute("UPDATE accounts SET credits = 0 WHERE key = 'a'")
        raise ValueError("boom")

    ops = [_Pending(lambda c: c.execute("UPDATE accounts SET credits = credits + 1 WHERE key = 'a'").rowcount),
           _Pending(bad),
           _Pending(lambda c: c.execute("UPDATE accounts SET credits = credits + 2 WHERE key = 'a'").rowcount)]
    s._queue, s._leading = list(ops), True
    s._commit_batch()
    assert [(op.result, type(op.error).__name__) for op in ops] == [(1, "NoneType"), (None, "ValueError"), (1, "NoneType")]
    assert all(op.done.is_set() for op in ops) and not s._leading
    assert s.get_account("a")["credits"] == 13
    assert s.charge("a", 13) == 0  # the queue works on afterwards
    s.close()


def test_sqlite_try_accept_many_answers_busy_at_once_while_another_writer_holds_the_lock(tmp_path):
    """The event loop's write: None (nothing done, no waiting) while another connection (another
    worker process) holds the write lock; the same batch succeeds once it is released."""
    import sqlite3

    path = tmp_path / "busy.sqlite"
    s = open_store(f"sqlite:{path}")
    s.put_account("a", 20)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    items = [("a", 12, task("t1", key="a"), job("j1", "t1")), ("a", 12, task("t2", key="a"), job("j2", "t2"))]
    started = time.monotonic()
    assert s.try_accept_many(items) is None
    assert s.try_rate_acquire("cover:a", 100.0, 5, 10.0) is None
    assert time.monotonic() - started < 0.5  # answered without waiting out the lock
    other.execute("COMMIT")
    assert s.get_account("a")["credits"] == 20 and s.get_task("t1") is None
    assert [s.try_rate_acquire("cover:a", 100.0, 1, 10.0)[0] for _ in range(2)] == [True, False]  # nothing was taken
    assert s.try_accept_many(items) == [8, None]  # one charge per item when the pair does not fit
    assert [t["taskId"] for t in s.list_tasks()] == ["t1"] and [j["id"] for j in s.list_jobs()] == ["j1"]
    other.close()
    s.close()


def test_sqlite_journal_chunks_keep_the_bound_on_disk_and_exactly_on_read(tmp_path):
    """One row per log_many call; whole chunks past the bound are deleted, and the entries of
    the chunk that straddles it are not read: exactly the newest `limit` entries."""
    s = open_store(f"sqlite:{tmp_path / 'journal.sqlite'}")
    for start in range(0, 70, 7):
        s.log_many("requests", [{"n": i} for i in range(start, start + 7)], 20)
        with s._conn() as conn:
            rows, stored = conn.execute("SELECT COUNT(*), SUM(count) FROM log_chunks").fetchone()
        assert stored <= 20 + 6 and rows <= 4
    assert [e["n"] for e in s.read_log("requests", limit=100)] == list(range(69, 49, -1))
    assert [e["n"] for e in s.read_log("requests", limit=100, n=50)] == [50]
    assert s.read_log("requests", limit=100, n=49) == []  # stored in the straddling chunk, past the bound
    s.close()


def test_sqlite_journal_entries_once_past_the_bound_stay_hidden_when_a_later_write_keeps_more(tmp_path):
    s = open_store(f"sqlite:{tmp_path / 'journal.sqlite'}")
    for start in (1, 5, 9):
        s.log_many("attempts", [{"n": i} for i in range(start, start + 4)], 5)
    assert [e["n"] for e in s.read_log("attempts")] == [12, 11, 10, 9, 8]
    s.log("attempts", {"n": 13}, 100)  # a restart with a larger journal_limit
    assert [e["n"] for e in s.read_log("attempts")] == [13, 12, 11, 10, 9, 8]  # 5-7 do not come back
    s.close()


def test_sqlite_store_of_an_earlier_version_keeps_its_journal(tmp_path):
    """Files written before the journal was chunked had one `logs` row per entry: opening one
    moves them into a chunk per journal, in order, and appends go on from there."""
    import sqlite3

    import orjson

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE logs (journal TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, "
                "PRIMARY KEY (journal, n)) WITHOUT ROWID")
    old.executemany("INSERT INTO logs VALUES (?, ?, ?)",
                    [("attempts", n, orjson.dumps({"n": n})) for n in range(4, 9)] + [("requests", 1, b'{"r":1}')])
    old.commit()
    old.close()
    s = open_store(f"sqlite:{path}")
    assert [e["n"] for e in s.read_log("attempts")] == [8, 7, 6, 5, 4]
    assert s.read_log("requests") == [{"r": 1}]
    s.log("attempts", {"n": 9}, 3)
    assert [e["n"] for e in s.read_log("attempts")] == [9, 8, 7]
    with s._conn() as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'logs'").fetchone() is None
    s.close()
    again = open_store(f"sqlite:{path}")  # reopened: the move was committed, and is not made twice
    assert [e["n"] for e in again.read_log("attempts")] == [9, 8, 7]
    again.close()


def test_memory_store_keeps_a_task_in_about_its_json_size():
    # orjson's bytes keep their whole output buffer (about 8 KB, which sys.getsizeof does not
    # show); the store must keep a copy of just the bytes, or a task costs 9 KB instead of 1.
    import tracemalloc

    import orjson

    s = open_store("memory")
    tasks = [task(f"t{i}", param="x" * 700) for i in range(200)]
    json_size = sum(len(orjson.dumps(t)) for t in tasks)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t in tasks:
            s.put_task(t)
        for t in tasks[:100]:
            s.update_task(t["taskId"], {"status": "SUCCESS"})
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 * json_size, (grown, json_size)
