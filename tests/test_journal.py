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
