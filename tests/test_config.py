"""Configuration: environment, CLI checks, the outbound allowlist."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import RecordingDelivery, body, submit
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config, from_env
from mock_server.netpolicy import allowed


def test_environment_overrides_defaults():
    cfg = from_env({"KIE_MOCK_PORT": "9000", "KIE_MOCK_TRANSPORT": "status", "KIE_MOCK_API_KEYS": "a,b:50",
                    "KIE_MOCK_STAGE_DELAYS": "1,2,3", "KIE_MOCK_INSTANT": "yes", "KIE_MOCK_RATE_LIMIT": "0"})
    assert (cfg.port, cfg.transport, cfg.api_keys, cfg.stage_delays, cfg.instant, cfg.rate_limit) == \
        (9000, "status", {"a": 1000, "b": 50}, (1.0, 2.0, 3.0), True, 0)
    assert from_env({"KIE_MOCK_CREDITS": "7"}).api_keys == {"kie-mock-key": 7}


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="KIE_MOCK_PORT='x'"):
        from_env({"KIE_MOCK_PORT": "x"})


@pytest.mark.parametrize("changes, refused", [
    ({"cover_cost": -1}, "cover cost must not be negative"), ({"cover_cost": 0}, None), ({"cover_cost": 1}, None),
    ({"public_url": "http://mock.example:8787"}, None), ({"public_url": "https://mock.example/kie/"}, None),
    *(({"public_url": url}, "public URL must be an absolute http") for url in
      ("mock.example:8787", "ftp://mock.example", "http://")),
])
def test_check_refuses_a_negative_cover_cost_and_a_public_url_that_is_no_absolute_http_url(changes, refused):
    cfg = Config(**changes)
    if refused is None:
        assert cfg.check() is cfg
    else:
        with pytest.raises(ValueError, match=refused):
            cfg.check()


@pytest.mark.parametrize("bind, base", [("127.0.0.1", "http://127.0.0.1:8787/"), ("0.0.0.0", "http://127.0.0.1:8787/"),
                                        ("::", "http://[::1]:8787/"), ("::1", "http://[::1]:8787/"),
                                        ("192.0.2.7", "http://192.0.2.7:8787/")])
def test_without_a_usable_host_the_file_urls_name_an_address_a_client_can_reach(bind, base):
    """The fallback is the bind address as a URL writes it, and loopback for a wildcard one
    (http://0.0.0.0:8787/ and http://:::8787/ reach nothing)."""
    assert Config(host=bind, port=8787).self_url() == base


@pytest.mark.parametrize("args,words", [
    (["--host", "0.0.0.0"], "set --admin-token"),
    (["--stage-delays", "1,2"], "three non-negative numbers"),
    (["--transport", "nope"], "invalid choice"),
])
def test_serve_refuses_bad_settings_with_exit_2(args, words):
    r = subprocess.run([sys.executable, "-m", "mock_server", "serve", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and words in r.stderr


@pytest.mark.parametrize("url,patterns,ok", [
    ("http://127.0.0.1:9/cb", None, True),
    ("http://127.0.0.1:9/cb", ("127.0.0.0/8",), True),
    ("http://10.0.0.5/cb", ("127.0.0.0/8",), False),
    ("http://hooks.example.com/cb", ("*.example.com",), True),
    ("http://example.com/cb", ("*.example.com",), False),
    ("http://localhost:8000/cb", ("localhost",), True),
    ("http://[::1]:8000/cb", ("::1",), True),
    ("http://anything.test/cb", ("*",), True),
    ("not a url", ("*",), False),
])
def test_outbound_allowlist(url, patterns, ok):
    assert allowed(url, patterns) is ok


def test_callbacks_outside_the_allowlist_are_not_sent_and_journaled_as_blocked():
    clock, delivery = VirtualClock(0.0), RecordingDelivery()
    app = create_app(Config(clock="virtual", outbound_allow=("127.0.0.0/8",)), clock=clock, deliver=delivery)
    submit(app.test_client(), body(callBackUrl="http://192.168.1.20/cb"))
    clock.advance(2)
    assert delivery.calls == []
    entry = app.extensions["kie_mock"].store.read_log("attempts")[0]
    assert entry["error"].startswith("blocked") and entry["ok"] is False


def test_the_banner_names_the_scenario_file_keys_and_how_stages_are_timed(tmp_path):
    from mock_server.server import _prepare_store, _scenario_keys, banner

    f = tmp_path / "s.yaml"
    f.write_text("accounts:\n  team-key-secret: {credits: 50}\n  kie-mock-key: {credits: 5}\n")
    keys = _scenario_keys(_prepare_store(Config(store="memory"), str(f)))  # read once, when it is checked
    line = banner(Config(time_scale=0.5), 8787, 1, "builtin", 1, keys)
    assert "keys: kie-mock-key, tea…et;" in line and "stages: 1/2.5/4 s;" in line and "source-check" not in line
    assert "team-key-secret" not in banner(Config(api_keys={"team-key-secret": 5}), 8787, 1, "builtin")  # masked
    line = banner(Config(instant=True, source_check=True), 8787, 2, "builtin")
    assert "keys: kie-mock-key;" in line and "stages: instant; uploadUrl fetched (--source-check)" in line
    with pytest.raises(SystemExit, match="missing.yaml"):  # serve stops with the file's sentence
        _prepare_store(Config(store="memory"), str(tmp_path / "missing.yaml"))
    assert _scenario_keys(_prepare_store(Config(store="memory"), None)) == ()
    assert banner(Config(host="::1"), 8787, 1, "builtin").startswith("kie-mock listening on http://[::1]:8787 ")


@pytest.mark.parametrize("token, ok", [(" ", False), (" t", False), ("t ", False), ("t", True), ("a b", True),
                                       ("", True)])
def test_an_admin_token_no_header_can_carry_is_refused_at_start(token, ok):
    """A header's value arrives without its surrounding spaces: `--admin-token ' '` locked the
    control API for good."""
    if ok:
        assert Config(admin_token=token).check().admin_token == token
    else:
        with pytest.raises(ValueError, match="must not start or end with a space"):
            Config(admin_token=token).check()


# -- secrets are never echoed back in full ---------------------------------------------------------
SECRET = "sk-live-SECRET-0123456789"


@pytest.mark.parametrize("env", [
    {"KIE_MOCK_API_KEYS": f"{SECRET}:1000,other-SECRET-abcdef:12x"},
    {"KIE_MOCK_API_KEYS": f"{SECRET}:1000", "KIE_MOCK_CREDITS": "many"},
])
def test_a_bad_key_list_names_the_key_masked(env):
    with pytest.raises(ValueError) as err:
        from_env(env)
    assert "SECRET" not in str(err.value) and "KIE_MOCK_" in str(err.value)
    if "12x" in env["KIE_MOCK_API_KEYS"]:
        assert "oth…ef: credits must be a whole number" in str(err.value)


def test_an_account_refused_by_the_control_api_or_a_scenario_file_is_named_masked(tmp_path):
    app = create_app(Config(clock="virtual"), clock=VirtualClock(0.0), deliver=RecordingDelivery())
    r = app.test_client().put(f"/_mock/accounts/{SECRET}", json={"credits": 5, "bogus": 1})
    assert r.status_code == 400 and "SECRET" not in r.get_json()["msg"] and "sk-…89" in r.get_json()["msg"]
    app.extensions["kie_mock"].scheduler.stop()
    f = tmp_path / "s.yaml"
    f.write_text(f"accounts:\n  {SECRET}: {{credits: 5, credit: 3}}\n")
    run = subprocess.run([sys.executable, "-m", "mock_server", "serve", "--port", "0", "--store", "memory",
                          "--scenario-file", str(f)], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "unknown field(s) credit" in run.stderr and "SECRET" not in run.stderr


def test_the_banner_masks_a_store_password():
    from mock_server.server import banner

    line = banner(Config(store="redis://:hunter2@10.0.0.7:6379/0"), 8787, 1, "granian")
    assert "hunter2" not in line and "store: redis://:***@10.0.0.7:6379/0;" in line
    assert "store: redis://10.0.0.7:6379/0;" in banner(Config(store="redis://10.0.0.7:6379/0"), 8787, 1, "granian")


@pytest.mark.parametrize("token, ok", [("tök€n-123", False), ("tab\there", False), ("plain-ASCII token~!", True)])
def test_an_admin_token_a_header_cannot_carry_as_typed_is_refused_at_start(token, ok):
    if ok:
        assert Config(admin_token=token).check().admin_token == token
    else:
        with pytest.raises(ValueError, match="printable ASCII"):
            Config(admin_token=token).check()


def test_a_new_sqlite_store_file_is_its_owners_only(tmp_path):
    import os
    import stat

    from mock_server.stores.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "kie.sqlite"))
    store.put_account(SECRET, 5)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in tmp_path.iterdir()}
    assert modes and all(mode == 0o600 for mode in modes.values()), modes
    store.close()


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_allowlist_without_a_pattern_is_no_allowlist_from_the_flag_and_the_environment(value, monkeypatch):
    import argparse

    from mock_server.cli import _serve_parser, build_config

    def make_parser():
        parser = argparse.ArgumentParser()
        _serve_parser(parser.add_subparsers(dest="command"))
        return parser

    monkeypatch.setenv("KIE_MOCK_OUTBOUND_ALLOW", value)
    assert from_env().outbound_allow is None
    monkeypatch.delenv("KIE_MOCK_OUTBOUND_ALLOW")
    assert build_config(make_parser().parse_args(["serve", "--outbound-allow", value])).outbound_allow is None
    assert build_config(make_parser().parse_args(["serve", "--outbound-allow", "10.0.0.0/8,"])).outbound_allow \
        == ("10.0.0.0/8",)


@pytest.mark.parametrize("url, loopback", [("http://127.0.0.1:9/", True), ("http://127.9.9.9/", True),
                                           ("http://[::1]:9/", True), ("http://localhost/", True),
                                           ("http://127.attacker.example/", False), ("http://10.0.0.1/", False)])
def test_the_kit_takes_only_real_loopback_hosts_for_loopback(url, loopback):
    from contract.target import is_loopback_url

    assert is_loopback_url(url) is loopback
