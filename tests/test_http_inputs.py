"""Type and transport traps through the Flask test client: whatever arrives, the answer is the
`{code, msg, data}` envelope with a clear message, never HTTP 500 / code 500.
(The same against a real running server, over sockets: tests/test_transport.py.)"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import AUTH, KEY, RecordingDelivery, body, submit
from mock_server.app import create_app
from mock_server.clock import VirtualClock
from mock_server.config import Config

URL = "/api/v1/generate/upload-cover"
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
VALID = orjson.dumps(body())


def envelope(r) -> dict:
    """The response's envelope, after checking it is one (and no 500)."""
    assert r.status_code != 500
    assert r.mimetype == "application/json", (r.status_code, r.data[:200])
    env = json.loads(r.data)
    assert isinstance(env, dict) and set(env) == {"code", "msg", "data"}, env
    assert isinstance(env["code"], int) and env["code"] != 500, env
    assert isinstance(env["msg"], str) and env["msg"]
    return env


def rejected(r, *fragments) -> str:
    env = envelope(r)
    assert r.status_code == 200 and env["code"] == 422 and env["data"] is None, env
    for f in fragments:
        assert f in env["msg"], env["msg"]
    return env["msg"]


def deep(n: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * n + close * n


BAD_BODIES = [
    ("broken-json", b'{"model": "V4",', "not valid JSON"),
    ("single-quotes", b"{'model': 'V4'}", "not valid JSON"),
    ("trailing-comma", VALID[:-1] + b",}", "not valid JSON"),
    ("two-documents", VALID + VALID, "not valid JSON"),
    ("array", b"[]", "must be a JSON object, got array"),
    ("array-of-body", b"[" + VALID + b"]", "must be a JSON object, got array"),
    ("string", b'"hello"', "must be a JSON object, got string"),
    ("number", b"42", "must be a JSON object, got number"),
    ("true", b"true", "must be a JSON object, got boolean"),
    ("null", b"null", "must be a JSON object, got null"),
    ("NaN", VALID.replace(b'"V3_5"', b"NaN"), "not valid JSON"),
    ("Infinity", b'{"styleWeight": Infinity}', "not valid JSON"),
    ("minus-Infinity", b'{"styleWeight": -Infinity}', "not valid JSON"),
    ("number-overflows-double", b'{"styleWeight": 1e400}', "a number beyond a double's range"),
    ("number-overflows-double-in-an-unknown-field", VALID[:-1] + b',"x": -1e400}', "a number beyond a double's range"),
    ("huge-body", b'{"prompt": "' + b"x" * (1 << 20) + b'"}', "too large"),
    ("deep-arrays-100k", deep(100_000), "not valid JSON"),
    ("deep-objects-100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "not valid JSON"),
    ("deep-in-a-field-2k", VALID[:-1] + b',"x":' + deep(2000) + b"}", "not valid JSON"),
    ("invalid-utf8", b'{"prompt": "\xff\xfe\xfd"}', "not valid JSON"),
    ("overlong-utf8", b'{"prompt": "\xc0\xaf"}', "not valid JSON"),
    ("lone-surrogate-escape", b'{"prompt": "\\ud800"}', "lone surrogate escape (\\ud800-\\udfff"),
    ("lone-low-surrogate-escape", b'{"prompt": "\\udc00"}', "lone surrogate escape"),
    ("high-surrogate-then-a-letter", b'{"prompt": "\\ud800\\u0041"}', "lone surrogate escape"),
    ("two-high-surrogates", b'{"prompt": "\\ud800\\ud800"}', "lone surrogate escape"),
    ("utf8-bom", b"\xef\xbb\xbf" + VALID, "not valid JSON"),
    ("utf16", VALID.decode().encode("utf-16"), "not valid JSON"),
    ("empty", b"", "empty"),
    ("whitespace", b" \r\n\t ", "empty"),
    ("nul-bytes", b"\x00" * 16, "not valid JSON"),
]


@pytest.mark.parametrize("raw, says", [pytest.param(r, s, id=i) for i, r, s in BAD_BODIES])
def test_bad_bodies_get_a_clear_422(client, raw, says):
    rejected(client.post(URL, data=raw, headers=JSON_HEADERS), says)


@pytest.mark.parametrize("weight", [b"18446744073709551616", b"100000000000000000000000000000", b"-" + b"9" * 40,
                                    b"1" + b"0" * 400, b"1e308", b"-1e308"])
def test_huge_numbers_are_refused_not_crashed_on(client, weight):
    raw = VALID[:-1] + b',"styleWeight":' + weight + b"}"
    env = envelope(client.post(URL, data=raw, headers=JSON_HEADERS))
    assert env["code"] == 422 and ("styleWeight" in env["msg"] or "beyond a double's range" in env["msg"]), env


def test_a_control_character_in_a_string_is_escaped_json_and_accepted(client):
    raw = orjson.dumps(body(prompt="a\u0000b\u001fc"))
    assert envelope(client.post(URL, data=raw, headers=JSON_HEADERS))["code"] == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml", "json",
                                          "application/jsonp", "text/json"])
def test_wrong_or_missing_content_type(client, content_type):
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    rejected(client.post(URL, data=VALID, headers=headers), "Content-Type must be application/json",
             content_type or "none")


def test_a_form_post_is_refused(client):
    rejected(client.post(URL, data={k: str(v) for k, v in body().items()}, headers=AUTH),
             "Content-Type must be application/json (got application/x-www-form-urlencoded")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_are_accepted(client, content_type):
    assert envelope(client.post(URL, data=VALID, headers={**AUTH, "Content-Type": content_type}))["code"] == 200


def test_duplicate_keys_the_last_one_wins(client):
    """Like JSON.parse and most parsers: the later duplicate overrides the earlier one."""
    good_last = VALID[:-1] + b',"model":"V9","model":"V4"}'
    bad_last = VALID[:-1] + b',"model":"V4","model":"V9"}'
    assert envelope(client.post(URL, data=good_last, headers=JSON_HEADERS))["code"] == 200
    rejected(client.post(URL, data=bad_last, headers=JSON_HEADERS), "model: must be one of", '"V9"')


@pytest.mark.parametrize("declared, code", [(len(VALID) + 1, 422), (len(VALID), 200)])
def test_a_body_shorter_than_its_content_length_is_refused_not_charged(client, declared, code):
    """A WSGI server (granian) hands over what came before the client closed: a truncated body
    that still parses was a task, charged."""
    r = client.post(URL, data=VALID, headers=JSON_HEADERS, environ_overrides={"CONTENT_LENGTH": str(declared)})
    env = envelope(r)
    assert env["code"] == code, env
    if code == 422:
        assert env["msg"] == f"request body ended early: {len(VALID)} of the {declared} bytes its Content-Length announced"
        assert client.get("/api/v1/chat/credit", headers=AUTH).get_json()["data"] == 1000


def test_unknown_fields_are_accepted_and_kept_in_param(client):
    status, env = submit(client, body(clientRef="abc-123", extra={"nested": [1, 2]}))
    assert (status, env["code"]) == (200, 200)
    info = client.get(f"/api/v1/generate/record-info?taskId={env['data']['taskId']}", headers=AUTH).get_json()
    param = json.loads(info["data"]["param"])
    assert param["clientRef"] == "abc-123" and param["extra"] == {"nested": [1, 2]} and param["model"] == "V3_5"


@pytest.mark.parametrize("containers, accepted", [(9_999, True), (10_000, True), (10_001, False),
                                                  (340_000, False)])
def test_a_body_of_more_than_10000_objects_and_arrays_is_refused_clearly(client, containers, accepted):
    """Counting the nesting of a body made of many shallow arrays cost the event loop up to a
    second per request (a wide body passes the 200-level rule): the walk stops at the limit.
    The body itself is one; an unknown field's array another; its items the rest."""
    items = containers - 2
    raw = VALID[:-1] + b',"extra":[' + b",".join([b"[]"] * items) + b"]}"
    r = client.post(URL, data=raw, headers=JSON_HEADERS)
    if accepted:
        assert envelope(r)["code"] == 200, envelope(r)
    else:
        rejected(r, "request body has more than 10000 objects and arrays")


@pytest.mark.parametrize("levels, accepted", [(199, True), (200, True), (201, False), (300, False), (1023, False)])
def test_nesting_is_accepted_up_to_200_levels_and_refused_clearly_beyond(client, levels, accepted):
    """The body itself is one level: an unknown field nested `levels - 1` deep makes `levels`.
    Beyond what the task's copy of the body can be written with (254 levels), this was a 500."""
    raw = VALID[:-1] + b',"extra":' + deep(levels - 1) + b"}"
    r = client.post(URL, data=raw, headers=JSON_HEADERS)
    if not accepted:
        rejected(r, "nested too deep: at most 200 levels")
        return
    env = envelope(r)
    assert env["code"] == 200, env
    info = client.get(f"/api/v1/generate/record-info?taskId={env['data']['taskId']}", headers=AUTH).get_json()
    assert json.loads(info["data"]["param"])["extra"] == json.loads(deep(levels - 1))


def test_a_cover_that_fails_with_a_500_gives_its_rate_slot_back(monkeypatch):
    """A bug of the fake while a cover is drafted (after it took its slot in the rate window)
    must not use the window up: the slots are given back, and the next cover is accepted."""
    from mock_server import lifecycle

    cfg = Config(clock="virtual", rate_limit=2, rate_window=60, api_keys={KEY: 10**6})
    app = create_app(cfg, clock=VirtualClock(start=1_750_000_000.0), deliver=RecordingDelivery())
    try:
        client = app.test_client()
        real = lifecycle.new_task

        def broken(*a, **kw):
            raise RuntimeError("a bug")
        monkeypatch.setattr(lifecycle, "new_task", broken)
        for _ in range(3):
            assert submit(client)[0] == 500
        monkeypatch.setattr(lifecycle, "new_task", real)
        assert [submit(client)[1]["code"] for _ in range(3)] == [200, 200, 429]  # the window holds exactly 2
    finally:
        app.extensions["kie_mock"].scheduler.stop()


# -- paths and methods ----------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/nope"), ("POST", "/api/v1/generate/upload"), ("POST", "/api/v2/generate/upload-cover"),
    ("POST", "/api/v1/generate/upload-cover/extra"), ("GET", "/api/v1/chat/credit/"), ("DELETE", "/api/v1"),
    ("GET", "/api/v1/generate/record-info/123"), ("OPTIONS", "/nope"),
])
def test_unknown_paths_answer_an_envelope_404(client, method, path):
    r = client.open(path, method=method, headers=AUTH)
    env = envelope(r)
    assert (r.status_code, env["code"], env["data"]) == (404, 404, None)
    assert "Not Found" in env["msg"]


@pytest.mark.parametrize("method, path, allow", [
    ("GET", URL, "POST"), ("PUT", URL, "POST"), ("DELETE", URL, "POST"), ("PATCH", URL, "POST"),
    ("TRACE", URL, "POST"), ("POST", "/api/v1/chat/credit", "GET, HEAD"),
    ("PUT", "/api/v1/generate/record-info", "GET, HEAD"), ("POST", "/files/t/x.mp3", "GET, HEAD"),
])
def test_wrong_methods_answer_405_with_allow(client, method, path, allow):
    r = client.open(path, method=method, headers=AUTH)
    env = envelope(r)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert env["code"] == 404 and f"Method {method} is not allowed" in env["msg"] and allow in env["msg"]


def test_head_has_the_headers_of_get_and_no_body(client):
    get, head = client.get("/api/v1/chat/credit", headers=AUTH), client.head("/api/v1/chat/credit", headers=AUTH)
    assert head.status_code == get.status_code == 200
    assert head.data == b"" and head.mimetype == "application/json"
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    not_allowed = client.head(URL, headers=AUTH)
    assert (not_allowed.status_code, not_allowed.headers["Allow"], not_allowed.data) == (405, "POST", b"")


@pytest.mark.parametrize("path, methods", [(URL, {"OPTIONS", "POST"}),
                                           ("/api/v1/chat/credit", {"OPTIONS", "GET", "HEAD"})])
def test_options_answers_the_envelope_and_allow(client, path, methods):
    r = client.options(path)
    env = envelope(r)
    assert r.status_code == 200 and env["code"] == 200
    assert set(env["data"]["allow"]) == methods == {m.strip() for m in r.headers["Allow"].split(",")}


# -- authentication -------------------------------------------------------------------------------
@pytest.mark.parametrize("authorization, says", [
    (None, "missing Authorization header"),
    ("", "missing Authorization header"),
    ("Bearer", "malformed"),
    ("Bearer ", "malformed"),
    ("Basic a2llLW1vY2sta2V5Og==", "malformed"),
    ("Basic x", "malformed"),
    (KEY, "malformed"),  # the key without a scheme
    ("Token " + KEY, "malformed"),
    ("Bearer\t" + KEY, "malformed"),  # RFC 7235: the separator is a space
    ("Bearer not-a-key", "unknown API key"),
    ("Bearer " + KEY + " extra", "unknown API key"),
    ("Bearer " + KEY.upper(), "unknown API key"),  # keys are case-sensitive
])
@pytest.mark.parametrize("method, path", [("GET", "/api/v1/chat/credit"), ("POST", URL),
                                          ("GET", "/api/v1/generate/record-info?taskId=x")])
def test_bad_credentials_are_401_in_the_envelope(client, service, method, path, authorization, says):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = client.open(path, method=method, data=VALID, headers={**headers, "Content-Type": "application/json"})
    env = envelope(r)
    assert (r.status_code, env["code"], env["data"]) == (200, 401, None)
    assert "You do not have access permissions" in env["msg"] and says in env["msg"]
    assert service.credit(KEY) == 1000  # nothing charged


def test_authentication_comes_before_body_validation(client):
    env = envelope(client.post(URL, data=b"{broken", headers={"Content-Type": "application/json"}))
    assert env["code"] == 401


@pytest.mark.parametrize("authorization", [
    "bearer " + KEY, "BEARER " + KEY, "bEaReR " + KEY,  # RFC 7235: the auth-scheme is case-insensitive
    "Bearer  " + KEY, "Bearer " + KEY + "  ",  # extra spaces around the token
])
def test_bearer_scheme_is_case_insensitive_and_spaces_are_tolerated(client, authorization):
    env = envelope(client.get("/api/v1/chat/credit", headers={"Authorization": authorization}))
    assert (env["code"], env["data"]) == (200, 1000)


# -- record-info and credit -----------------------------------------------------------------------
def test_record_info_for_an_unknown_id(client):
    r = client.get("/api/v1/generate/record-info?taskId=does-not-exist", headers=AUTH)
    assert r.status_code == 200 and envelope(r) == {"code": 422, "msg": "recordInfo is null", "data": None}


@pytest.mark.parametrize("query", ["", "?taskId=", "?taskid=abc", "?task_id=abc"])
def test_record_info_without_a_task_id(client, query):
    rejected(client.get("/api/v1/generate/record-info" + query, headers=AUTH), "Please enter taskId")


def test_record_info_of_another_accounts_task_is_unknown():
    cfg = Config(clock="virtual", api_keys={KEY: 1000, "other-key": 1000})
    app = create_app(cfg, clock=VirtualClock(start=1_750_000_000.0), deliver=RecordingDelivery())
    client = app.test_client()
    _, env = submit(client)
    r = client.get(f"/api/v1/generate/record-info?taskId={env['data']['taskId']}",
                   headers={"Authorization": "Bearer other-key"})
    assert envelope(r) == {"code": 422, "msg": "recordInfo is null", "data": None}
    app.extensions["kie_mock"].scheduler.stop()


@pytest.mark.parametrize("store", ["memory", "sqlite-file"])
def test_credit_goes_down_by_12_per_accepted_cover_only(store, tmp_path):
    # On SQLite the key's account is read from a per-process cache: the balance must not be.
    url = "memory" if store == "memory" else f"sqlite:{tmp_path / 'store.sqlite'}"
    app = create_app(Config(clock="virtual", store=url), clock=VirtualClock(start=1_750_000_000.0),
                     deliver=RecordingDelivery())
    client = app.test_client()

    def balance():
        return envelope(client.get("/api/v1/chat/credit", headers=AUTH))["data"]

    assert balance() == 1000
    assert submit(client)[1]["code"] == 200
    assert balance() == 988
    assert submit(client, body(model="V9"))[1]["code"] == 422  # a rejection costs nothing
    assert balance() == 988
    assert submit(client, body(model="V4_5PLUS"))[1]["code"] == 200
    assert balance() == 976
    app.extensions["kie_mock"].scheduler.stop()


def test_insufficient_credits_is_402_and_charges_nothing():
    cfg = Config(clock="virtual", api_keys={KEY: 20})
    app = create_app(cfg, clock=VirtualClock(start=1_750_000_000.0), deliver=RecordingDelivery())
    client = app.test_client()
    assert submit(client)[1]["code"] == 200
    status, env = submit(client)
    assert (status, env["code"], env["data"]) == (200, 402, None)
    assert "12" in env["msg"] and "8" in env["msg"]  # the cost and the balance
    assert envelope(client.get("/api/v1/chat/credit", headers=AUTH))["data"] == 8
    app.extensions["kie_mock"].scheduler.stop()


# -- no 500, whatever arrives ---------------------------------------------------------------------
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
field_names = st.sampled_from(sorted(body()) + ["style", "title", "negativeTags", "vocalGender", "styleWeight",
                                                "weirdnessConstraint", "audioWeight"])
# Bodies that look like requests: a valid body with some fields replaced by arbitrary JSON values.
mangled_bodies = st.builds(lambda base, changes: {**base, **changes},
                           st.sampled_from([body(), body(customMode=True, style="s", title="t")]),
                           st.dictionaries(field_names, json_values, max_size=4))
# Number fields get any number a JSON text can carry: tiny, huge (past 2**64 and 1e26, where
# decimal arithmetic runs out of digits), negative zero, subnormals.
any_number = (st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**80), 2**80)
              | st.sampled_from([1e30, -1e300, 5e-324, 10**40, -0.0]))
number_bodies = st.builds(lambda base, weights: {**base, **weights}, st.sampled_from([body(), body(customMode=True,
                          style="s", title="t")]),
                          st.dictionaries(st.sampled_from(["styleWeight", "weirdnessConstraint", "audioWeight"]),
                                          any_number, min_size=1))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=40)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "",
                                 "application/x-www-form-urlencoded", "application/problem+json", "*/*"]) | header_text
authorizations = st.sampled_from(["Bearer " + KEY, "bearer " + KEY, "Bearer", "Basic x", ""]) | header_text
# Random Prefer text never asks for latency (a real sleep) or a forced 500 (a legitimate code 500).
prefer = (st.sampled_from([None, "code=402", "code=999", "latency=abc", "latency=-1", "scenario=nope", "code=", ",,,"])
          | header_text.filter(lambda s: "latency" not in s.lower() and "500" not in s))


def _assert_envelope(r):
    env = envelope(r)
    assert r.status_code in (200, 404, 405, 429) or r.status_code == env["code"], (r.status_code, env)


@FUZZ
@given(value=st.one_of(json_values, mangled_bodies, number_bodies))
def test_fuzz_any_json_value_as_body(lenient_client, value):
    raw = json.dumps(value).encode()
    _assert_envelope(lenient_client.post(URL, data=raw, headers=JSON_HEADERS))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: VALID[:-1] + b)))
def test_fuzz_any_bytes_as_body(lenient_client, raw):
    _assert_envelope(lenient_client.post(URL, data=raw, headers=JSON_HEADERS))


@FUZZ
@given(content_type=content_types, authorization=authorizations, prefer=prefer,
       extra=st.dictionaries(st.from_regex(r"\AX-[A-Za-z0-9-]{1,12}\Z"), header_text, max_size=3),
       payload=st.sampled_from([VALID, b"{", b"[]", b""]))
def test_fuzz_headers(lenient_client, content_type, authorization, prefer, extra, payload):
    headers = {**extra, "Content-Type": content_type, "Authorization": authorization}
    if prefer is not None:
        headers["Prefer"] = prefer
    _assert_envelope(lenient_client.post(URL, data=payload, headers=headers))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       path=st.sampled_from(["/api/v1/generate/upload-cover", "/api/v1/generate/record-info", "/api/v1/chat/credit",
                             "/api/v1/", "/"]),
       suffix=st.text(max_size=20), query=st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3))
def test_fuzz_methods_paths_and_queries(lenient_client, method, path, suffix, query):
    full = (path + suffix).replace("?", "%3F").replace("#", "%23")
    full = "/" + full.lstrip("/")  # "//x" would be read by the test client as a host name, not a path
    r = lenient_client.open(full, method=method, query_string=query, headers=AUTH)
    if method == "HEAD":
        assert r.status_code != 500 and r.data == b""
    else:
        _assert_envelope(r)
