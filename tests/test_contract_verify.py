"""`kie-mock verify`: exit codes, tiers and the budget, JUnit XML, record and replay, pacing and 429."""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from contract.broken import other_server
from contract.runner import Budget, Context, Result, run_checks, all_checks
from contract.servers import ServerThread, make_fake, stop_app
from contract.target import Pacer, Reply, Target, WsgiTransport
from mock_server.cli import main


def verify(capsys, *args):
    code = main(["verify", "-q", "--examples", "2", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def other():
    """A conforming server that is not the fake (no control API), over HTTP."""
    app = other_server()
    with ServerThread(app) as url:
        yield url, app.app.extensions["kie_mock"]


def test_the_in_process_fake_agrees_and_writes_junit(capsys, tmp_path):
    code, out, _ = verify(capsys, "--junit-xml", str(tmp_path / "r.xml"))
    assert code == 0, out
    assert "0 failed, 0 skipped, 0 errors" in out
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == len(all_checks()) and suite.get("failures") == "0"


@pytest.mark.parametrize("args, says", [
    (["--allow-spend", "-1"], "--allow-spend"),
    (["--base-url", "ftp://example.com"], "--base-url"),
    (["--record", "a", "--replay", "b"], "cannot be combined"),
    (["--suite", "nope"], "unknown nope"),
    (["--base-url", "http://127.0.0.1:1"], "cannot reach"),
    (["--base-url", "https://api.kie.ai.invalid"], "--api-key"),
    (["--app", "contract.broken:no-such-variant"], "no 'no-such-variant'"),
    (["--replay", "/nonexistent/dir"], "no such directory"),
    (["--tier", "free", "--suite", "lifecycle"], "no check is both"),  # it ran every check
    (["--replay", "{empty}"], "holds no recording"),
    (["--replay", "{recording}", "--suite", "auth"], "--replay replays a whole recording"),
    (["--record", "{file}"], "is a file; a recording is a directory"),
    (["--junit-xml", "/nonexistent/dir/x.xml"], "--junit-xml: cannot write"),
])
def test_usage_errors_exit_2(capsys, args, says, monkeypatch, tmp_path):
    """Each one before anything runs (a bad --record or --junit-xml path used to fail after the
    whole run, with a traceback and the recording lost)."""
    monkeypatch.delenv("KIE_API_KEY", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "recording").mkdir()
    (tmp_path / "recording" / "exchanges.jsonl").write_text("")
    (tmp_path / "file").write_text("x")
    args = [a.format(empty=tmp_path / "empty", recording=tmp_path / "recording", file=tmp_path / "file") for a in args]
    code, out, err = verify(capsys, *args)
    assert code == 2 and says in err, err
    assert "Traceback" not in out + err and "[" not in out, out


def test_argparse_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--examples", "many"])
    assert exc.value.code == 2


def test_without_a_budget_a_target_that_is_not_a_fake_gets_free_checks_only(capsys, other):
    url, svc = other
    before = len(svc.store.list_tasks())
    code, out, _ = verify(capsys, "--base-url", url)
    assert code == 0, out
    skipped = re.findall(r"  - (\S+) \[(\w+)\]: (.*)", out)
    assert {t for _, t, _ in skipped} == {"spends", "control"}
    assert all("budget" in why or "control API" in why for _, _, why in skipped)
    assert len(svc.store.list_tasks()) == before  # nothing was created: nothing charged


def test_the_run_stops_before_exceeding_the_budget(capsys, other):
    url, svc = other
    before = len(svc.store.list_tasks())
    code, out, _ = verify(capsys, "--base-url", url, "--allow-spend", "40", "--tier", "spends")
    assert code == 0, out
    assert len(svc.store.list_tasks()) - before == 3  # 40 credits at 12 per cover
    assert "spend: 36/40 credits (3 covers at 12)" in out
    assert re.search(r"rules\.\S+ \[spends\]: budget exhausted before the first", out)


def test_a_spending_check_the_budget_cuts_short_stands_on_the_bodies_it_sent():
    app = other_server()
    try:
        ctx = Context(Target(WsgiTransport(app), "kie-mock-key"), budget=Budget(24), is_fake=False)
        (cut,) = run_checks(ctx, only=lambda c: c.name == "rules.at-limit")
        (none,) = run_checks(ctx, only=lambda c: c.name == "rules.legal-weights")
    finally:
        stop_app(app.app)
    assert (cut.status, cut.cases, cut.notes[-1]) == (
        "passed", 2, "checked 2 of 12 at-limit bodies: the budget (--allow-spend) ran out"), cut
    assert none.status == "skipped" and none.reason == "budget exhausted before the first of 3 weight bodies"


def test_a_conforming_server_that_is_not_the_fake_agrees(capsys, other):
    url, _ = other
    code, out, _ = verify(capsys, "--base-url", url, "--allow-spend", "100000")
    assert code == 0, out
    assert re.search(r"failures\.\S+ \[control\]: the target has no control API", out)  # skipped, not passed


SUITES = ("--suite", "auth", "--suite", "rules.one-past-limit", "--suite", "lifecycle", "--suite", "credit.balance")


def test_record_redacts_the_key_and_replay_holds_the_fake_to_it(capsys, tmp_path):
    rec = tmp_path / "rec"
    with ServerThread(make_fake()) as url:  # stands in for the real service
        code, out, _ = verify(capsys, "--base-url", url, "--api-key", "kie-mock-key", "--record", str(rec), *SUITES)
    assert code == 0, out
    files = {p.name: p.read_text() for p in rec.iterdir()}
    assert set(files) == {"meta.json", "exchanges.jsonl", "callbacks.jsonl"}
    text = "".join(files.values())
    assert "kie-mock-key" not in text and not re.search(r"kie-mock-verify-[0-9a-f]{12}\b", text)
    assert "Bearer <redacted>" in files["exchanges.jsonl"]
    assert len(files["callbacks.jsonl"].splitlines()) == 3

    code, out, _ = verify(capsys, "--replay", str(rec))
    assert code == 0, out

    code, out, _ = verify(capsys, "--replay", str(rec), "--app", "contract.broken:envelope-msg-renamed")
    assert code == 1 and "replay.shape" in out, out


def test_a_whole_recording_of_a_fake_replays_against_a_fake_without_disagreement(capsys, tmp_path):
    """Every suite recorded (negative cases with callBackUrl "" or ftp://... among them): the
    callback URLs of the cases that had one are replaced, nothing else (an "" prompt stays "");
    the control-tier checks, whose answers came from the recorded fake's state, are skipped."""
    rec = tmp_path / "rec"
    code, out, _ = verify(capsys, "--record", str(rec))
    assert code == 0, out
    bodies = [json.loads(x).get("body") for x in (rec / "exchanges.jsonl").read_text().splitlines()]
    assert any(isinstance(b, dict) and b.get("callBackUrl") == "" for b in bodies)
    assert any(isinstance(b, dict) and b.get("callBackUrl") not in (None, "") for b in bodies)
    code, out, _ = verify(capsys, "--replay", str(rec))
    assert code == 0, out
    assert "0 disagreement(s)" in out and "replay:failures.maintenance [control]: a control-tier check" in out
    assert re.search(r"\b\d+ passed, 0 failed, 9 skipped, 0 errors", out), out  # the 9 control checks


def test_replay_interrupted_reports_what_it_replayed(capsys, tmp_path):
    """Ctrl-C or SIGTERM (a cancelled CI job) during --replay: the checks replayed so far are
    returned with the one interrupted, instead of a traceback and no report."""
    from contract.replay import replay

    rec = tmp_path / "rec"
    code, out, _ = verify(capsys, "--record", str(rec), *SUITES)
    assert code == 0, out

    class InterruptedAt:
        def __init__(self, inner, at):
            self.inner, self.at, self.sent = inner, at, 0
            self.base_url = inner.base_url

        def send(self, *args):
            self.sent += 1
            if self.sent == self.at:
                raise KeyboardInterrupt
            return self.inner.send(*args)

    checks = [json.loads(line).get("check") for line in (rec / "exchanges.jsonl").read_text().splitlines()]
    at = checks.index(next(c for c in checks if c != checks[0])) + 1  # the first request of the second check
    app = make_fake()
    try:
        transport = InterruptedAt(WsgiTransport(app), at=at)
        ctx = Context(Target(transport, "kie-mock-key"), budget=Budget(None), is_fake=True)
        results = replay(ctx, rec)
    finally:
        stop_app(app)
    assert transport.sent == at and [r.check for r in results] == [f"replay:{c}" for c in dict.fromkeys(checks)][:2]
    first, second = results
    assert first.status == "passed" and first.cases == at - 1, first
    assert second.status == "error" and second.reason.startswith("interrupted: this check and the"), second


def test_replay_names_a_transport_difference(capsys, other, tmp_path):
    """The other server mirrors codes as HTTP statuses; the default fake does not: replay says so."""
    url, _ = other
    rec = tmp_path / "rec"
    code, out, _ = verify(capsys, "--base-url", url, "--allow-spend", "1000", "--record", str(rec), *SUITES)
    assert code == 0, out
    code, out, _ = verify(capsys, "--replay", str(rec))
    assert code == 1 and "replay.http-status" in out and "recorded: HTTP 401, code 401" in out


def test_replay_fails_when_the_recording_says_otherwise(capsys, tmp_path):
    rec = tmp_path / "rec"
    code, out, _ = verify(capsys, "--record", str(rec), "--suite", "credit.balance", "--suite", "lifecycle")
    assert code == 0, out
    lines = [json.loads(x) for x in (rec / "exchanges.jsonl").read_text().splitlines()]
    for x in lines:  # pretend the real service answered chat/credit differently
        if x["path"] == "/api/v1/chat/credit":
            x["response"]["json"]["data"] = {"balance": 5}
    (rec / "exchanges.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cbs = [json.loads(x) for x in (rec / "callbacks.jsonl").read_text().splitlines()]
    cbs[-1]["json"]["data"]["callbackType"] = "error"  # the recorded task failed; the fake's completes
    (rec / "callbacks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in cbs))
    code, out, _ = verify(capsys, "--replay", str(rec))
    assert code == 1
    assert "[replay:credit.balance]" in out and "replay.shape" in out
    assert "replay.callback-stages" in out


def test_replay_allows_what_the_contract_allows_a_real_service(capsys, tmp_path):
    """A real service's recording: createTime in epoch ms, the text and first stages skipped, a
    stage called back twice, and a 500 of its own. None of it is the fake's fault."""
    rec = tmp_path / "rec"
    code, out, _ = verify(capsys, "--record", str(rec), "--suite", "credit.balance", "--suite", "lifecycle")
    assert code == 0, out

    def epoch_ms(value):
        if isinstance(value, dict):
            return {k: (1758044664461 if k == "createTime" else epoch_ms(v)) for k, v in value.items()}
        return [epoch_ms(v) for v in value] if isinstance(value, list) else value

    lines = [epoch_ms(json.loads(x)) for x in (rec / "exchanges.jsonl").read_text().splitlines()]
    credit = next(x for x in lines if x["path"] == "/api/v1/chat/credit")
    lines.insert(lines.index(credit), dict(credit, response={"status": 500, "headers": {}, "json": {
        "code": 500, "msg": "Server Error", "data": None}}))
    (rec / "exchanges.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cbs = [epoch_ms(json.loads(x)) for x in (rec / "callbacks.jsonl").read_text().splitlines()]
    complete = [c for c in cbs if c["json"]["data"]["callbackType"] == "complete"]
    assert complete and any(t.get("createTime") == 1758044664461 for t in complete[0]["json"]["data"]["data"])
    (rec / "callbacks.jsonl").write_text("".join(json.dumps(x) + "\n" for x in complete * 2))
    code, out, _ = verify(capsys, "--replay", str(rec))
    assert code == 0, out
    assert "0 disagreement(s)" in out


def test_without_a_reachable_receiver_the_lifecycle_is_followed_by_polling():
    app = make_fake()
    try:
        target = Target(WsgiTransport(app), "kie-mock-key")
        ctx = Context(target, budget=Budget(None), callback_public=False, is_fake=True, callback_timeout=10)
        results = {r.check: r for r in run_checks(ctx, only=lambda c: c.suite == "lifecycle")}
    finally:
        stop_app(app)
    assert results["lifecycle.callbacks"].status == "skipped"
    assert "--callback-url" in results["lifecycle.callbacks"].reason
    assert results["lifecycle.record-info"].status == "passed", results["lifecycle.record-info"]
    assert results["lifecycle.files"].status == "passed", results["lifecycle.files"]


class Scripted:
    base_url = "http://scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = 0

    def send(self, method, path, query, headers, data):
        self.sent += 1
        return self.replies.pop(0)


def test_429_is_retried_after_what_retry_after_says():
    env = b'{"code":429,"msg":"Rate limited","data":null}'
    transport = Scripted([Reply(429, {"retry-after": "3", "content-type": "application/json"}, env),
                          Reply(200, {"content-type": "application/json"}, b'{"code":200,"msg":"success","data":1}')])
    slept = []
    target = Target(transport, "k", sleep=slept.append)
    ex = target.call("GET", "/api/v1/chat/credit")
    assert ex.reply.code == 200 and slept == [3.0] and transport.sent == 2


def test_429_gives_up_after_a_few_tries_and_can_be_asked_not_to_retry():
    env = b'{"code":429,"msg":"Rate limited","data":null}'
    transport = Scripted([Reply(429, {}, env)] * 5)
    slept = []
    target = Target(transport, "k", sleep=slept.append, retry_429=2)
    assert target.call("GET", "/api/v1/chat/credit").reply.status == 429
    assert slept == [10.0, 20.0]  # no Retry-After: the window, then twice it
    assert Target(Scripted([Reply(429, {}, env)]), "k", sleep=slept.append).call(
        "GET", "/x", retry_429=False).reply.status == 429


@pytest.mark.parametrize("retry_after, judged", [(None, "Retry-After: None"), ("0", "Retry-After: 0"),
                                                 ("1.5", "Retry-After: 1.5"), ("3", None)])
def test_a_429_run_into_along_the_way_is_judged_like_the_rate_limit_checks(retry_after, judged):
    """The run waits out a 429 and goes on; the 429 itself must still be the documented one
    (HTTP 429, the envelope, Retry-After in whole seconds): a target that leaves Retry-After out
    was only caught by the control-tier check, which a real service has not."""
    from contract.runner import CheckDef, Context

    env = b'{"code":429,"msg":"Rate limited","data":null}'
    headers = {"content-type": "application/json", **({"retry-after": retry_after} if retry_after else {})}
    transport = Scripted([Reply(429, headers, env),
                          Reply(200, {"content-type": "application/json"}, b'{"code":200,"msg":"success","data":1}')])
    ctx = Context(Target(transport, "k", sleep=lambda s: None), budget=Budget(None), is_fake=False)
    check = CheckDef("x.poll", "x", "free", lambda ctx: ctx.target.call("GET", "/api/v1/chat/credit"), "")
    (result,) = run_checks(ctx, [check])
    got = [(d.rule, d.target) for d in result.disagreements]
    assert got == ([] if judged is None else [("rate-limit.retry-after", judged)]), got
    assert result.status == ("passed" if judged is None else "failed")


def test_the_pacer_keeps_under_the_rate():
    slept = []
    pacer = Pacer(3, 10.0, sleep=slept.append)
    for _ in range(3):
        pacer.wait()
    assert slept == []
    pacer.wait()
    assert len(slept) == 1 and 9.9 < slept[0] <= 10.02


def test_kie_mock_verify_against_a_running_fake(tmp_path):
    """The command, end to end: `kie-mock serve` in a process, `kie-mock verify --base-url` against it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mock_server", "serve", "--port", str(port), "--instant",
                               "--rate-limit", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        server.stdout.readline()  # "kie-mock listening on ..."
        run = subprocess.run([sys.executable, "-m", "mock_server", "verify", "--base-url", f"http://127.0.0.1:{port}",
                              "--examples", "2", "-q"], capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(10)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the target AGREES with the contract" in run.stdout
    assert "0 skipped" in run.stdout


def test_a_fake_that_wants_an_admin_token_is_named_as_such_not_taken_for_the_real_service(capsys):
    from contract.servers import fake_config

    app = make_fake(fake_config().with_overrides(admin_token="s3cret"))
    try:
        with ServerThread(app) as url:
            code, out, err = verify(capsys, "--base-url", url, "--suite", "credit.balance")
            assert code == 2 and "needs its admin token: pass --admin-token" in out + err, out + err
            code, out, err = verify(capsys, "--base-url", url, "--admin-token", "wrong", "--suite", "credit.balance")
            assert code == 2, out + err
            code, out, _ = verify(capsys, "--base-url", url, "--admin-token", "s3cret", "--suite", "credit.balance")
            assert code == 0 and "fake detected" in out, out
    finally:
        stop_app(app)


def test_the_pytest_plugin_reaches_a_token_protected_fake_with_its_admin_token(tmp_path):
    """The how-to examples, against a running fake started with an admin token: with
    --kie-admin-token they pass (control tests included); without it they fail with a sentence
    rather than skip their control tests as if it were the real service."""
    from contract.servers import fake_config

    app = make_fake(fake_config().with_overrides(admin_token="s3cret"))
    try:
        with ServerThread(app) as url:
            def run(*extra):
                return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       "tests/examples", "--kie-base-url", url, "--kie-api-key", "kie-mock-key",
                                       *extra], capture_output=True, text=True, timeout=300)
            ok = run("--kie-admin-token", "s3cret")
            assert ok.returncode == 0 and "skipped" not in ok.stdout.splitlines()[-1], ok.stdout[-2000:]
            refused = run()
            assert refused.returncode == 1 and "needs its admin token: pass --kie-admin-token" in refused.stdout, \
                refused.stdout[-2000:]
    finally:
        stop_app(app)


def test_a_schema_disagreement_names_the_field_inside_a_oneof():
    """A callback (a oneOf of its stages) missing one track field: the report says which field of
    which track, not "(root): {...} is not valid under any of the given schemas"."""
    from contract import schemas as S

    track = {"id": "t1", "audio_url": "http://x/a.mp3", "source_audio_url": "http://x/b.mp3",
             "stream_audio_url": "http://x/c", "source_stream_audio_url": "http://x/d",
             "image_url": "http://x/e.jpeg", "source_image_url": "http://x/f.jpeg", "prompt": "p",
             "model_name": "chirp-v3-5", "title": "t", "tags": "", "createTime": "2026-01-01 00:00:00",
             "duration": 198.44}
    body = {"code": 200, "msg": "All generated successfully.",
            "data": {"callbackType": "complete", "task_id": "abc", "data": [track, dict(track, id="t2")]}}
    assert S.errors("callback.json", body) == [], S.errors("callback.json", body)
    del body["data"]["data"][0]["duration"]
    assert S.errors("callback.json", body) == ["data/data/0: 'duration' is a required property"]
    body["data"]["data"][0]["duration"], body["data"]["data"][1]["title"] = 1.0, 123
    assert S.errors("callback.json", body) == ["data/data/1/title: 123 is not of type 'string'"]


def test_a_field_missing_from_both_tracks_of_record_info_is_named_not_the_null_branch():
    """sunoData is an array of tracks or null: with two tracks each missing `duration` the null
    branch had fewer errors (one: "not of type 'null'") and the report showed the whole array."""
    from contract import schemas as S

    track = {"id": "t1", "audioUrl": "http://x/a.mp3", "sourceAudioUrl": "http://x/b.mp3",
             "streamAudioUrl": "http://x/c", "sourceStreamAudioUrl": "http://x/d", "imageUrl": "http://x/e.jpeg",
             "sourceImageUrl": "http://x/f.jpeg", "prompt": "p", "modelName": "chirp-v3-5", "title": "t",
             "tags": "", "createTime": "2026-01-01 00:00:00", "duration": 198.44}
    data = {"taskId": "abc", "parentMusicId": "", "param": "{}", "status": "SUCCESS", "type": "UPLOAD_COVER",
            "operationType": "upload_cover", "errorCode": None, "errorMessage": None,
            "response": {"taskId": "abc", "sunoData": [track, dict(track, id="t2")]}}
    body = {"code": 200, "msg": "success", "data": data}
    assert S.errors("record-info-response.json", body) == []
    for t in data["response"]["sunoData"]:
        del t["duration"]
    got = S.errors("record-info-response.json", body)
    assert got == ["data/response/sunoData/0: 'duration' is a required property",
                   "data/response/sunoData/1: 'duration' is a required property"], got


def test_a_request_shows_the_url_a_rule_is_about_and_hides_the_runs_own():
    from contract.target import summarize

    assert summarize({"uploadUrl": "https://a.example/x", "callBackUrl": "http://[::1/cover.mp3", "model": "V3_5"}) \
        == '{callBackUrl: "http://[::1/cover.mp3", model: "V3_5"}'
    assert summarize({"uploadUrl": "HTTPS://a.example/x", "callBackUrl": "https://b.example/" + "c" * 80}) == "{}"
    assert summarize({"uploadUrl": "ftp://a.example/" + "x" * 80}).startswith('{uploadUrl: "ftp://a.example/xxx')


def test_a_target_slower_than_the_request_timeout_is_named_with_the_request(capsys):
    """--request-timeout bounds one answer; the message says which request and which flag."""
    import time as _time

    def slow(environ, start_response):
        _time.sleep(1.0)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"code":200,"msg":"success","data":1}']

    with ServerThread(slow) as url:
        code, out, err = verify(capsys, "--base-url", url, "--request-timeout", "0.3")
    assert code == 2, out + err
    assert "GET /api/v1/chat/credit: no answer within 0.3 s (--request-timeout)" in err, err
    code, _, err = verify(capsys, "--request-timeout", "0")
    assert code == 2 and "--request-timeout: seconds > 0" in err


@pytest.mark.parametrize("suite", ["lifecycle.record-info", "lifecycle.files"])
def test_a_lifecycle_check_chosen_alone_makes_its_own_task(capsys, suite):
    """They used to need lifecycle.callbacks before them, and alone were always SKIPPED: a run
    that checked nothing and exited 0."""
    code, out, _ = verify(capsys, "--suite", suite)
    assert code == 0 and "1 passed, 0 failed, 0 skipped" in out, out


PLUGIN_PROJECT = '''
BODY = {"uploadUrl": "https://storage.example.com/upload", "customMode": False, "instrumental": False,
        "model": "V3_5", "prompt": "p", "callBackUrl": "http://127.0.0.1:9/cb"}


def test_a_sees_the_429_it_arms(kie, kie_control):
    kie_control.arm_code(429, key=kie.api_key)
    assert kie.upload_cover(BODY).reply.code == 429  # returned, not retried behind the test's back


def test_b_leaves_maintenance_on(kie, kie_control):
    kie_control.patch_settings(maintenance=True)
    assert kie.upload_cover(BODY).reply.code == 455


def test_c_a_session_test_after_it_starts_clean(kie_session):
    assert kie_session.upload_cover(BODY).reply.code == 200
'''


def test_the_pytest_plugin_returns_429s_cleans_up_after_a_test_and_refuses_an_unreachable_target(tmp_path):
    (tmp_path / "test_app.py").write_text(PLUGIN_PROJECT)

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                               str(tmp_path / "test_app.py"), *extra], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
    ok = run()
    assert ok.returncode == 0 and "3 passed" in ok.stdout, ok.stdout[-3000:]
    down = run("--kie-base-url", "http://127.0.0.1:1")  # not up: a failure, not "the real service" with skips
    assert down.returncode == 1 and "cannot reach http://127.0.0.1:1" in down.stdout, down.stdout[-3000:]
    assert "skipped" not in down.stdout.splitlines()[-1]


# -- a real service's flakiness, a lenient one's cost ---------------------------------------------------
def _not_a_fake(on_api=None, on_request=None):
    """other_server() (no control API), with `on_api(n, environ, status, headers, body)` editing the
    n-th answer under /api/ and `on_request` editing the bodies sent."""
    from contract.broken import Rewrite

    inner = other_server()
    count = [0]

    def on_response(environ, status, headers, body):
        if on_api and environ.get("PATH_INFO", "").startswith("/api/"):
            count[0] += 1
            return on_api(count[0], environ, status, headers, body)
        return status, headers, body

    return Rewrite(inner, on_request=on_request, on_response=on_response), inner


def test_a_transient_500_is_tried_again_not_reported_and_never_crashes_a_suite():
    """A flaky service's one HTTP 500 on a request that cannot create a task: sent again (after 1,
    2 s), not a disagreement; schemathesis's ServerError (empty message) crashed spec.negative."""
    flaky = {5, 30, 31, 90}  # the 30th and its retry: two in a row

    def on_api(n, environ, status, headers, body):
        if n in flaky:
            return "500 INTERNAL SERVER ERROR", [("Content-Type", "application/json")], \
                b'{"code":500,"msg":"Server Error","data":null}'
        return status, headers, body

    app, inner = _not_a_fake(on_api)
    slept = []
    try:
        target = Target(WsgiTransport(app), "kie-mock-key", sleep=slept.append, retry_transient=2)
        ctx = Context(target, budget=Budget(0), is_fake=False, examples=2)
        results = run_checks(ctx, only=lambda c: c.tier == "free")
    finally:
        stop_app(inner)
    assert [(r.check, r.status, r.reason) for r in results if r.status != "passed"] == []
    assert len(target.transients) == 4 and slept.count(1.0) == 3 and slept.count(2.0) == 1, (target.transients, slept)


def _always_500(n, environ, status, headers, body):
    return "500 INTERNAL SERVER ERROR", [("Content-Type", "application/json")], \
        b'{"code":500,"msg":"Server Error","data":null}'


def _failing_target():
    """A target that answers every API request 500, tried again twice: (target, the app to stop)."""
    app, inner = _not_a_fake(_always_500)
    return Target(WsgiTransport(app), "kie-mock-key", sleep=lambda s: None, retry_transient=2), inner


def test_a_500_that_stays_is_judged_and_a_spending_request_is_never_sent_twice():
    target, inner = _failing_target()
    try:
        ex = target.call("GET", "/api/v1/chat/credit")
        assert ex.reply.status == 500 and target.requests == 3  # tried twice more, then judged as it came
        cover = target.call("POST", "/api/v1/generate/upload-cover", json={"model": "V3_5"})
        assert cover.reply.status == 500 and target.requests == 4  # a POST is not idempotent by default
    finally:
        stop_app(inner)


def test_a_target_that_accepts_what_the_contract_rejects_costs_at_most_one_cover_beyond_the_budget():
    """Every body made valid on the way in: each rejected-body POST becomes a charged task. The
    run used to spend 216 credits against --allow-spend 24 (spec.negative never looked)."""
    from contract import strategies

    good = json.dumps({"uploadUrl": strategies.DEFAULT_UPLOAD_URL, "customMode": False, "instrumental": False,
                       "model": "V3_5", "prompt": "x", "callBackUrl": "https://example.com/cb"}).encode()

    def lenient(environ, body):
        if environ.get("PATH_INFO") == "/api/v1/generate/upload-cover" and environ.get("HTTP_AUTHORIZATION"):
            environ["CONTENT_TYPE"] = "application/json"
            return good
        return body

    app, inner = _not_a_fake(on_request=lenient)
    try:
        target = Target(WsgiTransport(app), "kie-mock-key", sleep=lambda s: None)
        ctx = Context(target, budget=Budget(24), is_fake=False, examples=2)
        svc = inner.app.extensions["kie_mock"]
        before = svc.credit("kie-mock-key")
        results = run_checks(ctx, only=lambda c: c.tier == "free")
        charged = before - svc.credit("kie-mock-key")
    finally:
        stop_app(inner)
    assert ctx.budget.surprises >= 2 and ctx.budget.spent == charged <= 24 + 12, (ctx.budget.spent, charged)
    assert any("would exceed the budget" in r.reason for r in results), [r.reason for r in results]
    assert any(r.disagreements for r in results)  # what it did accept is still reported


@pytest.mark.parametrize("args, says", [
    (["--callback-url", "https://tunnel.example/x"], "--callback-url needs --callback-port"),
    (["--callback-port", "{busy}"], "cannot listen on it"),
    (["--base-url", "{other}", "--api-key", "wrong-key"], "refused the API key"),
])
def test_setup_mistakes_of_a_real_run_are_usage_errors(capsys, other, args, says):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [a.format(busy=busy.getsockname()[1], other=other[0]) for a in args]
        code, out, err = verify(capsys, *args)
    assert code == 2 and says in err, err
    assert "Traceback" not in out + err


def test_junit_keeps_the_disagreements_of_a_check_that_then_errored(tmp_path):
    from contract.report import junit_xml
    from contract.runner import CheckDef

    def finds_then_crashes(ctx):
        ctx.disagree("envelope.fields", "GET /api/v1/chat/credit", "code, msg, data", "keys ['message']")
        raise ConnectionResetError("reset by peer")

    ctx = Context(Target(Scripted([]), "k"), budget=Budget(None), is_fake=False)
    results = run_checks(ctx, [CheckDef("x.crash", "x", "free", finds_then_crashes, "")])
    junit_xml(results, tmp_path / "r.xml")
    error = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase/error")
    assert error.get("message") == "ConnectionResetError: reset by peer"
    assert "envelope.fields | GET /api/v1/chat/credit | spec: code, msg, data | target: keys ['message']" in error.text


def test_sigterm_mid_run_still_writes_the_report_the_junit_xml_and_the_recording(tmp_path):
    """A CI job cancelled or timed out sends SIGTERM: the run used to die with nothing written."""
    import signal
    import time

    junit, rec = tmp_path / "r.xml", tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "mock_server", "verify", "--examples", "50", "--junit-xml",
                             str(junit), "--record", str(rec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(4)  # the in-process fake is up and some checks have run
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err[-2000:])
    assert "interrupted: this check and the" in out + err and "Traceback" not in err
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")
    assert 0 < len(cases) < len(all_checks())
    assert cases[-1].find("error").get("message").startswith("interrupted:")
    assert (rec / "exchanges.jsonl").read_text().strip()


def test_a_valid_cover_refused_only_for_its_auth_is_not_sent_again_after_a_500():
    """auth.malformed sends a valid body under `Basic`: a target that took it would make a task,
    so a 5xx is not followed by a second try; an invalid body is tried again."""
    target, inner = _failing_target()
    try:
        ctx = Context(target, budget=Budget(0), is_fake=False)
        ctx.result = Result("x", "x", "free")
        valid = {"uploadUrl": "https://s.example/a.mp3", "customMode": False, "instrumental": False,
                 "model": "V3_5", "prompt": "x", "callBackUrl": "https://s.example/cb"}
        ctx.send_rejected(valid, label="x", auth="Basic abc")
        assert target.requests == 1
        ctx.send_rejected(dict(valid, model="V9"), label="x")
        assert target.requests == 1 + 3
    finally:
        stop_app(inner)
