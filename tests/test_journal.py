"""The request journal is written behind the requests: buffered, then one store write."""

from __future__ import annotations

from mock_server.journal import FLUSH_AT, JOURNAL, RequestJournal
from mock_server.stores import open_store


def test_entries_wait_in_the_buffer_until_a_flush_or_a_read():
    store = open_store("memory")
    journal = RequestJournal(store, limit=1000)
    journal.add({"n": 1})
    journal.add({"n": 2})
    assert store.read_log(JOURNAL) == []  # not written yet
    assert [e["n"] for e in journal.read()] == [2, 1]  # a read in this process flushes first
    assert [e["n"] for e in store.read_log(JOURNAL)] == [2, 1]


def test_a_full_buffer_is_written_by_the_request_that_fills_it():
    store = open_store("memory")
    journal = RequestJournal(store, limit=10_000)
    for i in range(FLUSH_AT - 1):
        journal.add({"n": i})
    assert store.read_log(JOURNAL) == []  # one below
    journal.add({"n": FLUSH_AT - 1})  # at
    assert len(store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT
    journal.add({"n": FLUSH_AT})  # one above: buffered again
    assert len(store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT


def test_a_full_buffer_is_handed_to_the_thread_that_flushes_when_one_runs():
    store = open_store("memory")
    asked = []
    journal = RequestJournal(store, limit=10_000, hand_off=lambda: asked.append(1) or True)
    for i in range(FLUSH_AT - 1):
        journal.add({"n": i})
    assert asked == []  # one below: nobody asked
    journal.add({"n": FLUSH_AT - 1})  # at: the flushing thread is asked, the request writes nothing
    assert asked == [1] and store.read_log(JOURNAL) == []
    journal.add({"n": FLUSH_AT})  # still full: asked again
    assert asked == [1, 1] and store.read_log(JOURNAL) == []
    journal.flush()  # what the asked thread does
    assert len(store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT + 1
    nobody = RequestJournal(store, limit=10_000, hand_off=lambda: False)  # no thread runs: write it
    for i in range(FLUSH_AT):
        nobody.add({"n": i})
    assert len(store.read_log(JOURNAL, limit=10_000)) == 2 * FLUSH_AT + 1


def test_a_service_with_a_running_scheduler_gets_its_full_journal_written_by_it():
    import threading
    import time

    from mock_server.config import Config
    from mock_server.service import Service

    svc = Service(Config(store="memory", api_keys={}))
    writers = []
    real = svc.store.log_many
    svc.store.log_many = lambda *a: writers.append(threading.current_thread().name) or real(*a)
    svc.scheduler.poll_interval = 30.0  # no round unless asked
    svc.scheduler.start()
    try:
        time.sleep(0.1)  # its first round is done: it waits for 30 s now
        writers.clear()
        for i in range(FLUSH_AT):
            svc.journal.add({"n": i})
        deadline = time.monotonic() + 5
        while not writers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writers == ["kie-mock-scheduler"]  # written at once, by the scheduler, not by add()
        assert len(svc.store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT
    finally:
        svc.scheduler.stop()


def test_the_journal_keeps_the_newest_limit_entries_and_reset_forgets_the_buffer():
    store = open_store("memory")
    journal = RequestJournal(store, limit=3)
    for i in range(5):
        journal.add({"n": i})
    assert [e["n"] for e in journal.read()] == [4, 3, 2]
    journal.add({"n": 9})
    journal.clear()
    assert [e["n"] for e in journal.read()] == [4, 3, 2]


def test_a_failed_write_keeps_the_entries_for_the_next_flush():
    class Flaky:
        def __init__(self):
            self.fail, self.got = True, []

        def log_many(self, journal, entries, limit):
            if self.fail:
                raise OSError("store away")
            self.got += entries

    store = Flaky()
    journal = RequestJournal(store, limit=100)
    journal.add({"n": 1})
    try:
        journal.flush()
    except OSError:
        pass
    store.fail = False
    journal.add({"n": 2})
    journal.flush()
    assert [e["n"] for e in store.got] == [1, 2]


def test_the_scheduler_round_flushes_the_journal():
    from mock_server.config import Config
    from mock_server.service import Service

    svc = Service(Config(store="memory"))
    assert svc.journal.flush in svc.scheduler.each_round


def test_a_failed_write_keeps_the_newest_entries_when_more_arrived_meanwhile():
    class Flaky:
        def __init__(self):
            self.journal = None

        def log_many(self, journal, entries, limit):
            for n in (5, 6, 7):  # requests answered while the write was failing
                self.journal._buf.append({"n": n})
            raise OSError("store away")

    store = Flaky()
    journal = RequestJournal(store, limit=5)
    store.journal = journal
    for i in range(5):
        journal._buf.append({"n": i})
    try:
        journal.flush()
    except OSError:
        pass
    assert [e["n"] for e in journal._buf] == [3, 4, 5, 6, 7]  # the newest five, oldest first


def test_the_scheduler_takes_the_hand_off_only_while_its_thread_runs_and_flushes_when_stopped():
    from mock_server.config import Config
    from mock_server.service import Service

    svc = Service(Config(store="memory", api_keys={}))
    sched = svc.scheduler
    assert sched.nudge() is False  # not started: add() writes itself
    sched.poll_interval = 30.0
    sched.start()
    try:
        assert sched.nudge() is True
        svc.journal.add({"n": 1})  # below FLUSH_AT: waits for a round
    finally:
        sched.stop()
    assert sched.nudge() is False
    assert [e["n"] for e in svc.store.read_log(JOURNAL)] == [1]  # stop() ran a last round
    sched.start()  # and it can start again
    try:
        assert sched.nudge() is True and sched._thread.is_alive()
    finally:
        sched.stop()


# -- on an event-loop server (onloop.py): the loop writes the journal, never waiting -------------------
def test_try_flush_keeps_the_entries_while_sqlite_is_locked_elsewhere(tmp_path):
    import sqlite3

    store = open_store(f"sqlite:{tmp_path / 'j.sqlite'}")
    journal = RequestJournal(store, limit=100)
    journal.add({"n": 1})
    other = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        assert journal.try_flush() is False and len(journal) == 1  # at once, nothing lost
    finally:
        other.execute("COMMIT")
        other.close()
    journal.add({"n": 2})
    assert journal.try_flush() is True and len(journal) == 0
    assert [e["n"] for e in store.read_log(JOURNAL)] == [2, 1]
    store.close()


def _on_loop_service(store: str = "memory"):
    from mock_server.app import create_app
    from mock_server.config import Config
    from mock_server.onloop import OnLoop

    app = create_app(Config(store=store, clock="virtual"), start_scheduler=False)
    svc = app.extensions["kie_mock"]
    return svc, OnLoop(svc, app)


def test_on_a_loop_the_full_journal_is_written_by_the_loop_not_handed_to_the_scheduler():
    import asyncio
    import threading

    svc, on_loop = _on_loop_service()
    writers = []
    real = svc.store.try_log_many
    svc.store.try_log_many = lambda *a: writers.append(threading.current_thread().name) or real(*a)
    nudged = []
    on_loop._thread_hand_off = lambda: nudged.append(1) or True

    async def main():
        for i in range(FLUSH_AT - 1):
            svc.journal.add({"n": i})
        await asyncio.sleep(0)
        assert writers == []  # one below: nothing asked
        svc.journal.add({"n": FLUSH_AT - 1})  # at: a write on the loop, in its next turn
        assert writers == []
        await asyncio.sleep(0)
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert writers == [loop_thread] and nudged == [] and len(svc.journal) == 0
    assert len(svc.store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT
    on_loop.close()


def test_on_a_loop_a_locked_store_hands_the_journal_to_the_scheduler_round(tmp_path):
    import asyncio
    import sqlite3

    path = tmp_path / "j.sqlite"
    svc, on_loop = _on_loop_service(f"sqlite:{path}")
    nudged = []
    on_loop._thread_hand_off = lambda: nudged.append(1) or True
    rounds = svc.scheduler.each_round
    assert svc.journal.flush not in rounds and on_loop._journal_in_thread in rounds
    on_loop._journal_in_thread()  # a round while the loop keeps up: nothing to write, nothing written
    assert svc.store.read_log(JOURNAL) == []
    other = sqlite3.connect(path, isolation_level=None, timeout=0)

    async def main():
        other.execute("BEGIN IMMEDIATE")
        for i in range(FLUSH_AT):
            svc.journal.add({"n": i})
        await asyncio.sleep(0)  # the loop tried, found the lock held, and asked the scheduler

    asyncio.run(main())
    other.execute("COMMIT")
    other.close()
    assert nudged == [1] and len(svc.journal) == FLUSH_AT
    on_loop._journal_in_thread()  # the scheduler's round, where waiting for the lock is fine
    assert len(svc.journal) == 0 and len(svc.store.read_log(JOURNAL, limit=10_000)) == FLUSH_AT
    on_loop.close()
    svc.store.close()


def test_on_a_loop_the_scheduler_round_writes_a_journal_the_loop_left_too_long(monkeypatch):
    from mock_server import onloop

    svc, on_loop = _on_loop_service()
    svc.journal.add({"n": 1})
    clock = [1000.0]
    monkeypatch.setattr(onloop, "_monotonic", lambda: clock[0])
    on_loop._journal_written = 1000.0
    clock[0] = 1000.0 + on_loop.JOURNAL_STALE  # at the limit: still the loop's
    on_loop._journal_in_thread()
    assert len(svc.journal) == 1
    clock[0] += 0.001  # past it: the round writes it
    on_loop._journal_in_thread()
    assert len(svc.journal) == 0 and [e["n"] for e in svc.store.read_log(JOURNAL)] == [1]
    on_loop.close()
