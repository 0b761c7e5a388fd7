"""What processes on one store agree on through it: the virtual time (never taken back, even by
two advances at once), and who seeds the store after a reset or after it lost its state (one
process, once: the scenario file's faults are armed once, not once per process that noticed)."""

from __future__ import annotations

import pytest

from conftest import AUTH, RecordingDelivery
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config
from mock_server.scenario_file import apply_file
from mock_server.service import CLOCK_NOW, SEEDED

T0 = 1_750_000_000.0
FILE = "faults:\n  - {code: 409, count: 1}\naccounts:\n  12345678: {credits: 5}\n  team-key: {credits: 7}\n"


@pytest.fixture
def apps(tmp_path):
    """make(start): an in-process fake with a virtual clock at `start`, on one SQLite file."""
    made = []

    def make(start: float = T0):
        app = create_app(Config(store=f"sqlite:{tmp_path / 'kie.sqlite'}", clock="virtual"),
                         clock=VirtualClock(start=start), deliver=RecordingDelivery())
        made.append(app)
        return app.extensions["kie_mock"]

    yield make
    for app in made:
        app.extensions["kie_mock"].scheduler.stop()


def test_a_process_that_starts_takes_the_shared_time(apps):
    a = apps(T0)
    b = apps(T0 + 500)  # started later: its own clock would be ahead
    assert b.clock.now() == T0 and a.store.get_settings()[CLOCK_NOW] == T0


def test_two_advances_at_once_never_take_the_shared_time_back(apps):
    """Two processes advance from the same time, the longer one finishing first: the store used
    to be overwritten with the shorter one's end, and a process started then was 90 s behind."""
    a, b = apps(), apps()
    a.clock.advance(100)
    a.share_clock()
    b.clock.advance(10)  # b had not seen a's advance when it started its own
    b.share_clock()
    assert a.store.get_settings()[CLOCK_NOW] == T0 + 100
    assert b.clock.now() == T0 + 100  # b took the later time
    assert apps().clock.now() == T0 + 100


def test_a_request_during_a_reset_does_not_seed_the_store_a_second_time(apps, tmp_path):
    """reset() wipes the store, then seeds it; a request of a configured key in between found no
    account and no SEEDED mark, took the store for one that lost its state, and seeded it as
    well: the scenario file's faults were armed twice."""
    path = tmp_path / "failures.yaml"
    path.write_text(FILE)
    svc = apps()
    apply_file(svc, path)
    wipe, seen = svc.store.reset, []

    def reset_with_a_request_in_the_gap():
        wipe()
        seen.append(svc.authenticate(AUTH["Authorization"]))
    svc.store.reset = reset_with_a_request_in_the_gap
    svc.reset()
    assert len(svc.store.list_faults()) == 1
    assert svc.store.get_account("team-key")["credits"] == 7
    assert seen[0][0] == "kie-mock-key"  # the request in the gap was answered, by the one seeding


def test_of_two_processes_that_find_the_store_emptied_one_seeds(apps, tmp_path):
    path = tmp_path / "failures.yaml"
    path.write_text(FILE)
    a, b = apps(), apps()
    for svc in (a, b):
        apply_file(svc, path)
    assert len(a.store.list_faults()) == 1  # b found the file applied already
    a.store.reset()  # behind their backs (a Redis restarted empty)
    assert SEEDED not in a.store.get_settings()
    # b reads before a has seeded, and goes on after: it must not seed a second time
    stale_settings, stale_prelude = a.store.get_settings(), a.store.prelude("kie-mock-key")
    assert a.authenticate(AUTH["Authorization"])[0] == "kie-mock-key"
    b.store.get_settings, b.store.prelude = (lambda: stale_settings), (lambda key: stale_prelude)
    b.authenticate(AUTH["Authorization"])
    del b.store.get_settings, b.store.prelude
    assert len(a.store.list_faults()) == 1 and a.store.get_account("team-key")["credits"] == 7


def test_a_scenario_file_with_number_and_name_keys_is_applied_and_recognised(apps, tmp_path, capsys):
    path = tmp_path / "failures.yaml"
    path.write_text(FILE)  # accounts keyed 12345678 (a YAML number) and team-key
    svc = apps()
    apply_file(svc, path)
    assert svc.store.get_account("12345678")["credits"] == 5
    apply_file(apps(), path)
    assert "already applied to this store" in capsys.readouterr().err
    assert len(svc.store.list_faults()) == 1


def test_a_process_that_starts_on_a_store_wiped_by_a_reset_it_died_in_applies_the_file_once(apps, tmp_path):
    """A worker killed right after a reset wiped the store: its replacement seeded only the
    configured keys, and the scenario file's accounts and settings stayed gone."""
    path = tmp_path / "failures.yaml"
    path.write_text(FILE + "settings: {rate_limit: 5}\n")
    first = apps()
    apply_file(first, path)
    first.store.reset()  # the reset's wipe, and the death before its seeding
    for _ in range(2):  # the replacement worker and another one: the file applied once
        apply_file(apps(), path, remember_only=True)
    assert first.store.get_account("team-key")["credits"] == 7 and len(first.store.list_faults()) == 1
    assert first.settings()["rate_limit"] == 5


def test_a_scenario_files_key_is_seeded_again_when_the_store_lost_its_state(apps, tmp_path):
    path = tmp_path / "failures.yaml"
    path.write_text(FILE)
    svc = apps()
    apply_file(svc, path)
    svc.store.reset()  # behind its back
    key, view, refusal = svc.authenticate("Bearer team-key")
    assert (key, refusal) == ("team-key", None) and view.account["credits"] == 7


def test_a_worker_that_starts_during_a_reset_and_the_reset_apply_the_file_once(apps, tmp_path):
    """The reset wiped the store and applied the file before marking it applied; a worker starting
    in between found no mark and applied it as well: the file's faults armed twice."""
    path = tmp_path / "failures.yaml"
    path.write_text(FILE)
    svc = apps()
    apply_file(svc, path)
    seed = svc.seed_accounts

    def seeding_with_a_worker_starting_meanwhile():  # the reset has wiped the store and claimed its seeding
        seed()
        apply_file(apps(), path, remember_only=True)
    svc.seed_accounts = seeding_with_a_worker_starting_meanwhile
    svc.reset()
    assert len(svc.store.list_faults()) == 1 and svc.store.get_account("team-key")["credits"] == 7
