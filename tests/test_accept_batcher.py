"""The event-loop server's batched store writes (rsgi.AcceptBatcher): covers that reach their write
in one turn of the loop share one `try_accept_many`; a busy store is retried later with the
covers that joined meanwhile; each request gets its own outcome; nothing answers before its write."""

from __future__ import annotations

import asyncio

from mock_server.rsgi import AcceptBatcher


class Cover:
    """Stands in for api.PendingCover: its store write's arguments, and how it answers."""

    def __init__(self, n: int):
        self.n = n
        self.draft = self

    def accept_args(self) -> tuple:
        return ("key", 1, {"taskId": f"t{self.n}"}, {"id": f"j{self.n}"})

    def settle(self, balance):
        return ("settled", self.n, balance)

    def failed(self, exc):
        return ("failed", self.n, str(exc))


class Store:
    """Records each try_accept_many call; answers busy (None) `busy` times first."""

    def __init__(self, busy: int = 0, fail_item: int | None = None):
        self.calls: list[list[str]] = []
        self.busy, self.fail_item = busy, fail_item
        self.blocking_calls = 0

    def try_accept_many(self, items):
        self.calls.append([task["taskId"] for _, _, task, _ in items])
        if self.busy:
            self.busy -= 1
            return None
        return [ValueError("bad row") if i == self.fail_item else 100 - i for i in range(len(items))]

    def accept_many(self, items):
        self.blocking_calls += 1
        return [100 - i for i in range(len(items))]


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
    assert batcher.busy == 2 and store.blocking_calls == 0


def test_a_store_busy_for_too_long_gets_a_blocking_write():
    store = Store(busy=10**9)
    batcher = AcceptBatcher(store)
    batcher.BUSY_GIVE_UP = 0.01

    async def main():
        return await batcher.write(Cover(0))

    assert run(main()) == ("settled", 0, 100)
    assert store.blocking_calls == 1 and len(store.calls) >= 2


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
