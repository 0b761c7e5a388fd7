"""The event-loop server's batched store writes (onloop.AcceptBatcher): covers that reach their write
in one turn of the loop share one `try_accept_many`; a busy store is retried later with the
covers that joined meanwhile; each request gets its own outcome; nothing answers before its write."""

from __future__ import annotations

import asyncio

import orjson

from conftest import body

from mock_server.api import PendingCover
from mock_server.onloop import AcceptBatcher


class Cover:
    """Stands in for api.PendingCover: its store write's arguments, and how it answers."""

    token = None  # no rate slot to give back

    def __init__(self, n: int):
        self.n = n
        self.draft = self

    def accept_args(self) -> tuple:
        return ("key", 1, {"taskId": f"t{self.n}"}, {"id": f"j{self.n}"})

    answer = PendingCover.answer  # the real dispatch, onto the two answers below

    def settle(self, balance):
        return ("settled", self.n, balance)

    def failed(self, exc):
        return ("failed", self.n, str(exc))


class Store:
    """Records each try_accept_many call; answers busy (None) `busy` times first."""

    def __init__(self, busy: int = 0, fail_item: int | None = None, refuse_item: int | None = None):
        self.calls: list[list[str]] = []
        self.busy, self.fail_item, self.refuse_item = busy, fail_item, refuse_item

    def try_accept_many(self, items):
        self.calls.append([task["taskId"] for _, _, task, _ in items])
        if self.busy:
            self.busy -= 1
            return None
        return [ValueError("bad row") if i == self.fail_item else None if i == self.refuse_item else 100 - i
                for i in range(len(items))]


def run(coro):
    return asyncio.run(coro)


def test_covers_of_one_loop_turn_share_one_write_each_with_its_own_outcome():
    store = Store(fail_item=1)
    batcher = AcceptBatcher(store)

    async def main():
        futs = [batcher.write(Cover(n)) for n in range(3)]  # one turn: nothing written yet
        assert store.calls == [] and not any(f.done() for f in futs)
        return await asyncio.gather(*futs)

    assert run(main()) == [("settled", 0, 100), ("failed", 1, "bad row"), ("settled", 2, 98)]
    assert store.calls == [["t0", "t1", "t2"]]
    assert (batcher.batches, batcher.written) == (1, 3)


def test_a_cover_refused_for_credits_gives_its_slot_back_in_a_thread_the_others_answer_on_the_loop():
    """A 402 gives back its rate slot (a write that may wait for the lock): not on the loop, and
    not in the HTTP pool either. A 402 without a slot (no rate limit) has nothing to give back."""
    import threading

    class Where(Cover):
        token = "slot"

        def settle(self, balance):
            return ("settled", self.n, balance, threading.current_thread().name)

    class NoSlot(Where):
        token = None

    batcher = AcceptBatcher(Store(refuse_item=1))

    async def main():
        return await asyncio.gather(*(batcher.write(Where(n)) for n in range(3)))

    here = threading.current_thread().name
    assert run(main()) == [("settled", 0, 100, here), ("settled", 1, None, "kie-mock-give-back_0"),
                           ("settled", 2, 98, here)]
    batcher = AcceptBatcher(Store(refuse_item=0))

    async def no_slot():
        return await batcher.write(NoSlot(0))

    assert run(no_slot()) == ("settled", 0, None, here)


def test_a_give_back_thread_that_cannot_run_still_answers_every_cover():
    class Slot(Cover):
        token = "slot"

    batcher = AcceptBatcher(Store(refuse_item=0))
    batcher._give_back_pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(1)
    batcher._give_back_pool.shutdown()  # submitting now raises

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(batcher.write(Slot(n)) for n in range(3))), 5)

    assert run(main()) == [("settled", 0, None), ("settled", 1, 99), ("settled", 2, 98)]


def test_a_later_turn_is_a_new_batch():
    store = Store()
    batcher = AcceptBatcher(store)

    async def main():
        first = await batcher.write(Cover(0))
        second = await asyncio.gather(batcher.write(Cover(1)), batcher.write(Cover(2)))
        return first, second

    assert run(main()) == (("settled", 0, 100), [("settled", 1, 100), ("settled", 2, 99)])
    assert store.calls == [["t0"], ["t1", "t2"]]


def test_a_busy_store_is_retried_with_the_covers_that_joined_meanwhile():
    store = Store(busy=2)
    batcher = AcceptBatcher(store)

    async def main():
        first = batcher.write(Cover(0))
        await asyncio.sleep(0)  # the first try happens (busy), a retry is planned
        await asyncio.sleep(0)
        assert store.calls == [["t0"]] and not first.done()
        late = batcher.write(Cover(1))  # joins the waiting batch
        return await asyncio.gather(first, late)

    assert run(main()) == [("settled", 0, 100), ("settled", 1, 99)]
    assert store.calls == [["t0"], ["t0", "t1"], ["t0", "t1"]]
    assert batcher.busy == 2


def test_a_lock_held_too_long_fails_the_batch_and_the_next_one_starts_afresh():
    store = Store(busy=10**9)
    batcher = AcceptBatcher(store)
    batcher.BUSY_GIVE_UP = 0.01

    async def main():
        first = await batcher.write(Cover(0))
        store.busy = 0
        return first, await batcher.write(Cover(1))

    first, second = run(main())
    assert first[:2] == ("failed", 0) and "stayed held" in first[2]
    assert second == ("settled", 1, 100)
    assert batcher.busy >= 2 and batcher.busy_since is None


def test_a_short_answer_from_the_store_fails_the_batch_rather_than_leaving_a_request_waiting():
    class Short(Store):
        def try_accept_many(self, items):
            return [100]

    batcher = AcceptBatcher(Short())

    async def main():
        return await asyncio.gather(batcher.write(Cover(0)), batcher.write(Cover(1)))

    got = run(main())
    assert [g[:2] for g in got] == [("failed", 0), ("failed", 1)] and "1 of 2" in got[0][2]


def test_an_answer_that_raises_is_a_500_for_that_request_only():
    class Raising(Cover):
        def settle(self, balance):
            raise KeyError("boom")

    batcher = AcceptBatcher(Store())

    async def main():
        return await asyncio.gather(batcher.write(Raising(0)), batcher.write(Cover(1)))

    broken, fine = run(main())
    assert broken.status == 500 and b"kie-mock bug" in broken.body
    assert fine == ("settled", 1, 99)


def test_a_store_that_raises_fails_every_cover_of_the_batch_but_not_the_loop():
    class Broken(Store):
        def try_accept_many(self, items):
            raise OSError("disk gone")

    batcher = AcceptBatcher(Broken())

    async def main():
        got = await asyncio.gather(batcher.write(Cover(0)), batcher.write(Cover(1)))
        return got, await batcher.write(Cover(2))

    got, after = run(main())
    assert got == [("failed", 0, "disk gone"), ("failed", 1, "disk gone")]
    assert after == ("failed", 2, "disk gone")


# -- through the server's request path (rsgi.RsgiApp), in process ---------------------------------
class Scope:
    proto, method, path, query_string, scheme = "http", "POST", "/api/v1/generate/upload-cover", "", "http"
    server, client, http_version = "127.0.0.1:8787", "127.0.0.1:50000", "1.1"

    def __init__(self, key: str, payload: bytes):
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                        "content-length": str(len(payload)), "host": "127.0.0.1:8787"}


class Proto:
    def __init__(self, payload: bytes):
        self.payload, self.answer = payload, None

    async def __call__(self):
        return self.payload

    def response_bytes(self, status, headers, body):
        self.answer = (status, orjson.loads(body))


def serve_together(app, keys: list[str]) -> list[dict]:
    """Requests that arrive in the same turn of the loop; their envelopes."""
    payload = orjson.dumps(body(callBackUrl="http://127.0.0.1:9/cb"))
    protos = [Proto(payload) for _ in keys]

    async def main():
        await asyncio.gather(*(app(Scope(key, payload), proto) for key, proto in zip(keys, protos)))

    asyncio.run(main())
    return [p.answer[1] for p in protos]


def rsgi_app(store: str = "memory", rate_limit: int = 0, **accounts):
    from mock_server.app import create_app
    from mock_server.config import Config
    from mock_server.rsgi import RsgiApp

    flask_app = create_app(Config(store=store, rate_limit=rate_limit, clock="virtual", api_keys=accounts),
                           start_scheduler=False)
    return RsgiApp(flask_app.extensions["kie_mock"], flask_app)


def test_covers_arriving_together_share_one_store_write():
    app = rsgi_app(**{"key-one-0001": 24, "key-two-0002": 100})
    got = serve_together(app, ["key-one-0001", "key-one-0001", "key-one-0001", "key-two-0002"])
    assert [g["code"] for g in got] == [200, 200, 402, 200]
    assert (app.batcher.batches, app.batcher.written) == (1, 4)
    store = app.svc.store
    assert store.get_account("key-one-0001")["credits"] == 0 and store.get_account("key-two-0002")["credits"] == 88
    assert {t["taskId"] for t in store.list_tasks()} == {g["data"]["taskId"] for g in got if g["code"] == 200}


def test_an_armed_scenario_refused_with_402_goes_to_the_next_cover_of_the_same_turn():
    """The scenario is for the next task actually created: a cover that took it and was refused
    (402) gives it back before the cover after it is drafted, even when both arrive together."""
    app = rsgi_app(**{"broke-key-01": 0, "rich-key-01": 100})
    app.svc.store.arm_fault({"id": "f1", "kind": "scenario", "key": "*", "count": 1, "scenario": "fail-501"})
    got = serve_together(app, ["broke-key-01", "rich-key-01"])
    assert [g["code"] for g in got] == [402, 200]
    (task,) = app.svc.store.list_tasks()
    assert task["scenario"]["name"] == "fail-501"
    assert app.svc.store.list_faults() == []


def test_a_store_write_that_raises_is_a_500_and_gives_the_armed_scenario_back():
    app = rsgi_app(**{"key-one-0001": 100})
    store = app.svc.store
    store.arm_fault({"id": "f1", "kind": "scenario", "key": "*", "count": 1, "scenario": "fail-501"})
    real_accept = store.accept
    store.accept = lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    (got,) = serve_together(app, ["key-one-0001"])
    assert got["code"] == 500 and got["data"] is None
    assert [(f["scenario"], f["count"]) for f in store.list_faults()] == [("fail-501", 1)]
    assert store.list_tasks() == [] and store.get_account("key-one-0001")["credits"] == 100
    store.accept = real_accept
    (got,) = serve_together(app, ["key-one-0001"])
    assert got["code"] == 200 and store.list_tasks()[0]["scenario"]["name"] == "fail-501"


def test_a_rate_window_locked_elsewhere_is_waited_for_in_a_thread_not_on_the_loop(tmp_path):
    """With a rate limit, a cover takes its slot in a write. While another process holds SQLite's
    write lock, the request goes to the thread pool (nothing was changed yet): the event loop
    keeps running, and the cover is accepted, once, when the lock is released."""
    import sqlite3

    path = tmp_path / "rate.sqlite"
    app = rsgi_app(store=f"sqlite:{path}", rate_limit=5, **{"key-one-0001": 100})
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    payload = orjson.dumps(body(callBackUrl="http://127.0.0.1:9/cb"))
    proto = Proto(payload)
    ticks = []

    async def main():
        request = asyncio.ensure_future(app(Scope("key-one-0001", payload), proto))
        other.execute("BEGIN IMMEDIATE")  # another worker is writing
        for _ in range(20):  # the loop is free meanwhile
            await asyncio.sleep(0.01)
            ticks.append(proto.answer)
        other.execute("COMMIT")
        await asyncio.wait_for(request, 30)

    asyncio.run(main())
    other.close()
    assert len(ticks) == 20 and ticks[-1] is None  # 200 ms of loop turns, no answer while locked
    status, envelope = proto.answer
    assert envelope["code"] == 200
    store = app.svc.store
    assert [t["taskId"] for t in store.list_tasks()] == [envelope["data"]["taskId"]]
    assert len(app.svc.journal.read(limit=10)) == 1  # journaled once, by the run that answered
