"""Issue 4: scenario files, the control API's settings, accounts and faults from a YAML or
JSON file given at start, checked the way a team uses them: applied, then seen over HTTP.
A bad file stops the fake with a sentence saying what is wrong, and a non-zero exit.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import urllib3

from conftest import AUTH, KEY, body, submit
from mock_server.config import mask_key
from mock_server.control_client import ControlClient
from mock_server.scenario_file import apply_file
from test_failures import T0, accepted, auth, credits, make_fake, record_info, serve, start_serve, stop  # noqa: F401

YAML = textwrap.dedent("""\
    # checked into a team's repo: rehearse a short balance, a flaky first request and a late failure
    settings:
      rate_limit: 3
      rate_window: 60
      cover_cost: 5
      latency: {min: 0, max: 0}
      default_scenario: duplicate-callbacks
      maintenance_window: {start_in: 100, duration: 10}
    accounts:
      team-key: {credits: 11, webhookHmacKey: s3cret}
      broke-key: {credits: 4}
    faults:
      - {code: 409, count: 1, key: team-key}
      - {scenario: fail-501, count: 1, key: team-key}
      - scenario: delayed-callbacks
        params: {delay: 5}
        key: kie-mock-key
""")

DATA = {
    "settings": {"rate_limit": 3, "rate_window": 60, "cover_cost": 5, "latency": {"min": 0, "max": 0},
                 "default_scenario": "duplicate-callbacks", "maintenance_window": {"start_in": 100, "duration": 10}},
    "accounts": {"team-key": {"credits": 11, "webhookHmacKey": "s3cret"}, "broke-key": {"credits": 4}},
    "faults": [{"code": 409, "count": 1, "key": "team-key"}, {"scenario": "fail-501", "count": 1, "key": "team-key"},
               {"scenario": "delayed-callbacks", "params": {"delay": 5}, "key": KEY}],
}


@pytest.fixture(params=["yaml", "json"])
def scenario_path(request, tmp_path):
    path = tmp_path / f"failures.{request.param}"
    path.write_text(YAML if request.param == "yaml" else json.dumps(DATA, indent=2))
    return path


def state(ctl: ControlClient) -> tuple:
    faults = [{k: v for k, v in f.items() if k != "id"} for f in ctl.faults()]
    return ctl.settings(), sorted(map(str, ctl.accounts())), faults


def test_the_yaml_and_json_forms_say_the_same():
    import yaml

    assert yaml.safe_load(YAML) == DATA


def test_applied_file_sets_settings_accounts_and_faults(scenario_path, make_fake):
    fake = make_fake()
    apply_file(fake.service, scenario_path)
    settings, _, faults = state(fake.ctl)
    assert settings == {"rate_limit": 3, "rate_window": 60.0, "cover_cost": 5, "record_info_per_second": 3,
                        "maintenance": False, "maintenance_window": [T0 + 100, T0 + 110],
                        "latency": {"min": 0, "max": 0}, "default_scenario": "duplicate-callbacks"}
    assert [(f["kind"], f.get("code") or f.get("scenario"), f["count"]) for f in faults] == [
        ("code", 409, 1), ("scenario", "fail-501", 1), ("scenario", "delayed-callbacks", 1)]
    assert {(a["credits"], a["signed"]) for a in fake.ctl.accounts()} == {(1000, False), (11, True), (4, False)}


def test_what_a_client_sees_after_the_file(scenario_path, make_fake):
    fake = make_fake()
    apply_file(fake.service, scenario_path)
    client, clock, delivery = fake.client, fake.clock, fake.delivery
    team = auth("team-key")

    # the first request of team-key: the armed 409; then its first task plays fail-501 (5 credits)
    assert submit(client, headers=team)[1]["code"] == 409
    failing = accepted(client, headers=team)
    assert credits(client, "team-key") == 6
    # broke-key has 4 credits, a cover costs 5 here
    assert submit(client, headers=auth("broke-key"))[1]["code"] == 402
    # the default key's first task is delayed by 5 s; then the default scenario (duplicates)
    delayed = accepted(client)
    duplicated = accepted(client)
    clock.advance(8)
    assert delivery.stages(failing) == ["text", "error"]
    assert all("X-Webhook-Signature" in c["headers"] for c in delivery.calls
               if c["body"]["data"]["task_id"] == failing)
    assert record_info(client, failing, "team-key")["data"]["errorCode"] == 501
    assert delivery.stages(delayed) == ["text"]  # t = 2 + 5
    assert delivery.stages(duplicated) == ["text", "text", "first", "first", "complete", "complete"]
    # rate limit 3 per 60 s for the default key: 2 used, 1 left
    accepted(client)
    r = client.post("/api/v1/generate/upload-cover", json=body(), headers=AUTH)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "52")
    # maintenance from t+100 to t+110
    clock.advance(92)
    assert submit(client, headers=team)[1]["code"] == 455
    clock.advance(10)
    assert client.get("/api/v1/chat/credit", headers=team).get_json() == {"code": 200, "msg": "success", "data": 6}


@pytest.mark.parametrize("text", ["", "# nothing here\n", "{}", "settings: {}\naccounts: {}\nfaults: []\n"])
def test_an_empty_file_changes_nothing(tmp_path, make_fake, text):
    fake = make_fake()
    before = state(fake.ctl)
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    apply_file(fake.service, path)
    assert state(fake.ctl) == before


# -- bad files ------------------------------------------------------------------------------------------
BAD_FILES = [
    ("settings: [1, 2\n", "yaml", "while parsing"),
    ('{"settings": {"rate_limit": 5},}', "json", "scenario file"),
    ("- settings\n", "yaml", "a mapping with only settings, accounts, faults"),
    ("setings: {rate_limit: 5}\n", "yaml", "a mapping with only settings, accounts, faults"),
    ("settings: [rate_limit]\n", "yaml", "settings: a JSON object"),
    ("settings: {rate_limt: 5}\n", "yaml", "unknown setting 'rate_limt'"),
    ("settings: {rate_limit: five}\n", "yaml", "rate_limit"),
    ("settings: {maintenance: sometimes}\n", "yaml", "maintenance: true or false"),
    ("settings: {default_scenario: explode}\n", "yaml", "unknown scenario 'explode'"),
    ("accounts: [team-key]\n", "yaml", "accounts is a mapping"),
    ("accounts: {team-key: 30}\n", "yaml", "account t…: a JSON object"),
    ("accounts: {team-key: {credits: -5}}\n", "yaml", "credits"),
    ("accounts: {team-key: {credit: 5}}\n", "yaml", "unknown field(s) credit"),
    ("faults: {code: 402}\n", "yaml", "faults a list"),
    ("faults: [402]\n", "yaml", "each fault is a mapping"),
    ("faults: [{code: 418}]\n", "yaml", "code: one of"),
    ("faults: [{scenario: fail-999}]\n", "yaml", "unknown scenario 'fail-999'"),
    ("faults: [{scenario: delayed-callbacks, params: {delai: 5}}]\n", "yaml", "takes only delay"),
    ('{"faults": [{"code": 402, "count": 0}]}', "json", "count"),
]


@pytest.mark.parametrize("text, ext, reason", BAD_FILES, ids=[t[:40] for t, _, _ in BAD_FILES])
def test_a_bad_file_stops_with_a_reason(tmp_path, make_fake, text, ext, reason):
    path = tmp_path / f"bad.{ext}"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        apply_file(make_fake().service, path)
    message = str(exc.value.code)
    assert message.startswith("kie-mock: ") and reason in message, message
    assert exc.value.code != 0


def test_a_missing_file_stops_with_a_reason(tmp_path, make_fake):
    with pytest.raises(SystemExit) as exc:
        apply_file(make_fake().service, tmp_path / "nope.yaml")
    assert "nope.yaml" in str(exc.value.code) and "No such file" in str(exc.value.code)


# -- through `kie-mock serve --scenario-file` ---------------------------------------------------------
def test_serve_applies_the_file_at_start(scenario_path):
    with serve("--clock", "virtual", "--scenario-file", str(scenario_path)) as base:
        http = urllib3.PoolManager(retries=False)
        ctl = ControlClient(base)
        settings, _, faults = state(ctl)
        assert (settings["rate_limit"], settings["cover_cost"], settings["default_scenario"]) == \
            (3, 5, "duplicate-callbacks")
        assert len(faults) == 3

        def cover(key):
            r = http.request("POST", base + "/api/v1/generate/upload-cover", body=json.dumps(body()).encode(),
                             headers={**auth(key), "Content-Type": "application/json"})
            return json.loads(r.data)["code"]

        assert [cover("team-key"), cover("team-key"), cover("broke-key")] == [409, 200, 402]
        assert [t["scenario"]["name"] for t in ctl.tasks()] == ["fail-501"]


def test_reset_on_a_shared_store_comes_back_to_the_scenario_file(tmp_path):
    """The parent applies the file to a shared store; every worker must still remember it, or
    POST /_mock/reset (served by any worker) wiped the file's accounts, settings and faults."""
    path = tmp_path / "failures.yaml"
    path.write_text(YAML)
    with serve("--store", f"sqlite:{tmp_path / 's.sqlite'}", "--workers", "2", "--clock", "real",
               "--scenario-file", str(path)) as base:
        ctl = ControlClient(base)

        def now():  # the file's maintenance window starts "in N s": from the reset on
            settings, accounts, faults = state(ctl)
            return {k: v for k, v in settings.items() if k != "maintenance_window"}, accounts, faults
        before = now()
        assert before[0]["default_scenario"] == "duplicate-callbacks" and before[2]
        for _ in range(4):  # whichever worker takes it
            ctl.reset()
            assert now() == before


def test_a_restart_on_the_same_store_keeps_the_state_the_file_led_to(tmp_path):
    """A restart (or a second instance on a shared store) does not wind the team's state back to
    the file: balances spent, settings changed and faults used stay as they are. A changed file is
    applied; a reset applies the file again."""
    path, store = tmp_path / "failures.yaml", f"sqlite:{tmp_path / 's.sqlite'}"
    path.write_text(YAML)
    args = ("--store", store, "--clock", "real", "--scenario-file", str(path))

    def state(ctl):
        team = [a["credits"] for a in ctl.accounts() if a["key"] == mask_key("team-key")]
        return ctl.settings(), {"team-key": team[0]}, ctl.faults()
    with serve(*args) as base:
        ctl = ControlClient(base)
        ctl.set_credits("team-key", 7)
        ctl.update_settings(rate_limit=9)
        ctl.clear_faults()
    with serve(*args) as base:  # the same file, the same store
        ctl = ControlClient(base)
        settings, accounts, faults = state(ctl)
        assert (settings["rate_limit"], accounts["team-key"], faults) == (9, 7, [])
        ctl.reset()
        settings, accounts, faults = state(ctl)
        assert (settings["rate_limit"], accounts["team-key"], len(faults)) == (3, 11, 3)
        ctl.set_credits("team-key", 7)
    path.write_text(YAML.replace("team-key: {credits: 11", "team-key: {credits: 20"))
    with serve(*args) as base:  # the file changed: applied
        settings, accounts, faults = state(ControlClient(base))
        assert (accounts["team-key"], len(faults)) == (20, 6)  # its faults armed again, after the 3 left


@pytest.mark.parametrize("text, reason", [
    ("faults: [{code: 418}]\n", "code: one of"),
    ("setings: {}\n", "a mapping with only settings, accounts, faults"),
    ("settings: {maintenance_window: [0, 1" + "0" * 400 + "]}\n", "maintenance_window"),  # was an OverflowError
    ("accounts: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deep"),  # was a RecursionError
], ids=["code-418", "misspelt-section", "400-digit-integer", "100000-levels"])
def test_serve_with_a_bad_file_exits_non_zero_with_the_reason(tmp_path, text, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = start_serve("--port", "0", "--store", "memory", "--scenario-file", str(path))
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError("kie-mock serve kept running with a bad scenario file") from None
    assert proc.returncode != 0
    assert "kie-mock: " in output and reason in output, output
    assert "Traceback" not in output and "died" not in output, output  # stopped before any worker started


def test_serve_with_a_missing_file_exits_non_zero(tmp_path):
    proc = start_serve("--port", "0", "--store", "memory", "--scenario-file", str(tmp_path / "nope.yaml"))
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError("kie-mock serve kept running with a missing scenario file") from None
    assert proc.returncode != 0 and "nope.yaml" in output, output


def test_reset_comes_back_to_the_scenario_file_state(tmp_path, client, service):
    from mock_server.scenario_file import apply_file

    path = tmp_path / "setup.yaml"
    path.write_text("accounts: {team-key: {credits: 30}}\nsettings: {rate_limit: 5}\nfaults: [{code: 409, key: team-key}]\n")
    apply_file(service, path)
    client.post("/_mock/reset")
    assert service.store.get_account("team-key")["credits"] == 30
    assert service.settings()["rate_limit"] == 5
    assert [f["code"] for f in service.store.list_faults()] == [409]
    assert service.store.get_account("kie-mock-key")["credits"] == 1000
