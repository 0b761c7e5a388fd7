"""Issue 2's request rules at their boundaries, for every model, through the HTTP API.

Lengths come from the limit table (schemas/model-limits.json via mock_server.limits.table()),
so a table edit moves every boundary with it; `test_the_page_numbers_are_the_table` pins the
page's numbers once so that an edit is noticed. Each case asserts the verdict and, for a
rejection, that the 422 names the field (and, for lengths, the limit and the model).

The case lists are plain data (`Case`), reused by tests/test_independent_validator.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from conftest import AUTH, body, custom_body
from mock_server.limits import table

URL = "/api/v1/generate/upload-cover"
LIMITS = table()
MODELS = LIMITS.model_names


def custom(**overrides) -> dict:
    """conftest.custom_body, but style/title/prompt can be overridden (or dropped with ...) too."""
    b = custom_body()
    b.update(overrides)
    return {k: v for k, v in b.items() if v is not ...}


ALWAYS_REQUIRED = {"customMode", "instrumental", "model", "callBackUrl"}
# What the endpoint page says is required in each mode (written from the page, not the schema).
MODES = {
    "custom-instrumental": (lambda **kw: custom(**{"instrumental": True, **kw}),
                            ALWAYS_REQUIRED | {"style", "title", "uploadUrl"}),
    "custom-vocal": (lambda **kw: custom(**{"instrumental": False, **kw}),
                     ALWAYS_REQUIRED | {"style", "title", "prompt", "uploadUrl"}),
    "noncustom-instrumental": (lambda **kw: body(**{"instrumental": True, **kw}),
                               ALWAYS_REQUIRED | {"prompt", "uploadUrl"}),
    "noncustom-vocal": (lambda **kw: body(**{"instrumental": False, **kw}),
                        ALWAYS_REQUIRED | {"prompt", "uploadUrl"}),
}
WEIGHTS = ("styleWeight", "weirdnessConstraint", "audioWeight")


@dataclass(frozen=True)
class Case:
    id: str
    body: dict
    ok: bool
    field: str | None = None  # the field a rejection must name
    says: tuple[str, ...] = ()  # fragments the 422 msg must contain
    exact: str | None = None  # the whole 422 msg, where the wording is the contract


# Characters, not bytes and not UTF-16 units: JSON Schema's maxLength counts code points.
FILLERS = {"ascii": "a", "latin": "ü", "astral": "\U0001F3B5"}


def length_cases() -> list[Case]:
    cases = []
    for model, lim in LIMITS.models.items():
        for instrumental in (True, False):
            make = MODES["custom-instrumental" if instrumental else "custom-vocal"][0]
            for name in ("style", "title", "prompt"):
                limit = getattr(lim, name)
                for n in (1, limit - 1, limit, limit + 1):
                    for fname, char in FILLERS.items():
                        ok = n <= limit
                        cases.append(Case(
                            f"{model}-custom-{'instr' if instrumental else 'vocal'}-{name}-{n}-{fname}",
                            make(model=model, **{name: char * n}), ok, name,
                            exact=None if ok else f"{name}: at most {limit} characters for model {model} (got {n})"))
        limit = LIMITS.non_custom_prompt
        for instrumental in (True, False):
            for n in (1, limit - 1, limit, limit + 1):
                for fname, char in FILLERS.items():
                    ok = n <= limit
                    cases.append(Case(
                        f"{model}-noncustom-{'instr' if instrumental else 'vocal'}-prompt-{n}-{fname}",
                        body(model=model, instrumental=instrumental, prompt=char * n), ok, "prompt",
                        exact=None if ok else f"prompt: at most {limit} characters in non-custom mode (got {n})"))
    return cases


def required_cases() -> list[Case]:
    """Drop each field in each mode: required ones are named, the others may be left out."""
    cases = []
    for mode, (make, required) in MODES.items():
        full = make(negativeTags="Heavy Metal", vocalGender="f", styleWeight=0.5,
                    weirdnessConstraint=0.5, audioWeight=0.5)
        for name in sorted(set(full) | required):
            dropped = {k: v for k, v in full.items() if k != name}
            ok = name not in required
            cases.append(Case(f"{mode}-without-{name}", dropped, ok, name,
                              says=() if ok else (f"Please enter {name}",)))
    return cases


def empty_and_null_cases() -> list[Case]:
    """"" and null for every required field: a clear 422 naming it."""
    says_for_empty = {
        "uploadUrl": "must be an absolute http(s) URL", "callBackUrl": "must be an absolute http(s) URL",
        "prompt": "must not be empty", "style": "must not be empty", "title": "must not be empty",
        "model": "must be one of", "customMode": "must be a boolean", "instrumental": "must be a boolean",
    }
    says_for_null = {"model": "must be one of", "customMode": "must be a boolean",
                     "instrumental": "must be a boolean"}
    cases = []
    for mode, (make, required) in MODES.items():
        for name in sorted(required):
            cases.append(Case(f"{mode}-{name}-empty", make(**{name: ""}), False, name,
                              says=(f"{name}:", says_for_empty[name])))
            cases.append(Case(f"{mode}-{name}-null", make(**{name: None}), False, name,
                              says=(f"{name}:", says_for_null.get(name, "must be a string"))))
    return cases


def non_custom_leave_empty_cases() -> list[Case]:
    """Design choice: the page says style/title are "left empty" in non-custom mode, so "",
    null and absent are accepted and any text is refused (rather than silently ignored)."""
    cases = []
    for instrumental in (True, False):
        mode = "instr" if instrumental else "vocal"
        for name in ("style", "title"):
            for label, value in (("absent", ...), ("empty", ""), ("null", None)):
                cases.append(Case(f"noncustom-{mode}-{name}-{label}",
                                  body(instrumental=instrumental, **{name: value}), True))
            for label, value in (("text", "Jazz"), ("space", " ")):
                cases.append(Case(f"noncustom-{mode}-{name}-{label}", body(instrumental=instrumental, **{name: value}),
                                  False, name, says=(f"{name}: leave empty in non-custom mode",)))
    return cases


WEIGHT_VALUES = [
    # (id, value, accepted, what the 422 says)
    ("minus-0.01", -0.01, False, "must be between 0 and 1"),
    ("0", 0.0, True, None),
    ("0.01", 0.01, True, None),
    ("0.29", 0.29, True, None),  # 0.29 / 0.01 is 28.999999999999996 in binary floats
    ("0.57", 0.57, True, None),  # 0.57 / 0.01 is 56.99999999999999
    ("0.65", 0.65, True, None),  # the page's example
    ("0.99", 0.99, True, None),
    ("1", 1.0, True, None),
    ("1.01", 1.01, False, "must be between 0 and 1"),
    ("0.295", 0.295, False, "at most 2 decimal places"),
    ("0.001", 0.001, False, "at most 2 decimal places"),
    ("1e-2", 1e-2, True, None),
    ("int-0", 0, True, None),
    ("int-1", 1, True, None),
    ("minus-zero", -0.0, True, None),
    ("true", True, False, "must be a number"),  # booleans are not numbers
    ("false", False, False, "must be a number"),
    ("string-0.5", "0.5", False, "must be a number"),
    ("null", None, True, None),  # null = omitted
    ("1e30", 1e30, False, "must be between 0 and 1"),  # used to crash multipleOf (Decimal precision)
    ("int-1e30", 10**30, False, "must be between 0 and 1"),
    ("5e-324", 5e-324, False, "at most 2 decimal places"),
]


def weight_cases() -> list[Case]:
    return [Case(f"{name}-{vid}", body(**{name: value}), ok, name, says=(f"{name}:", says) if says else ())
            for name in WEIGHTS for vid, value, ok, says in WEIGHT_VALUES]


def vocal_gender_cases() -> list[Case]:
    enum = "vocalGender: must be one of m, f"
    values = [("m", "m", None), ("f", "f", None), ("null", None, None), ("absent", ..., None),
              ("x", "x", enum), ("empty", "", None), ("upper-M", "M", enum), ("male", "male", enum),
              ("number", 1, "vocalGender: must be a string")]
    return [Case(f"{mode}-vocalGender-{vid}", make(vocalGender=v), says is None, "vocalGender",
                 says=(says,) if says else ())
            for mode, (make, _) in MODES.items() for vid, v, says in values]


def model_cases() -> list[Case]:
    allowed = ", ".join(MODELS)
    cases = [Case(f"{mode}-model-{m}", make(model=m), True) for mode, (make, _) in MODES.items() for m in MODELS]
    for vid, value in (("v3_5", "v3_5"), ("V5", "V5"), ("V4_5ALL", "V4_5ALL"), ("V4.5", "V4.5"),
                       ("empty", ""), ("null", None), ("number", 3.5), ("padded", " V4")):
        cases.append(Case(f"model-{vid}", body(model=value), False, "model",
                          says=(f"model: must be one of {allowed}",)))
        cases.append(Case(f"custom-model-{vid}", custom(model=value), False, "model",
                          says=(f"model: must be one of {allowed}",)))
    return cases


def boolean_cases() -> list[Case]:
    cases = []
    for name in ("customMode", "instrumental"):
        for vid, value in (("string-true", "true"), ("string-false", "false"), ("1", 1), ("0", 0),
                           ("null", None), ("list", [True])):
            for make_id, make in (("noncustom", body), ("custom", custom)):
                cases.append(Case(f"{make_id}-{name}-{vid}", make(**{name: value}), False, name,
                                  says=(f"{name}: must be a boolean (true or false)",)))
    return cases


BAD_URLS = [
    ("not-a-uri", "not a uri"),
    ("no-scheme", "storage.example.com/upload"),
    ("relative", "/upload/song.mp3"),
    ("scheme-relative", "//storage.example.com/upload"),
    ("ftp", "ftp://storage.example.com/upload"),
    ("file", "file:///etc/passwd"),
    ("mailto", "mailto:a@example.com"),
    ("http-no-host", "http://"),
    ("https-no-host", "https://"),
    ("empty-host-port", "http://:8080/cb"),
    ("empty-host-userinfo", "http://user@/cb"),
    ("triple-slash", "http:///cb"),
    ("space-in-path", "https://storage.example.com/my upload"),
    ("space-in-host", "https://storage example.com/upload"),
    ("leading-space", " https://storage.example.com/upload"),
    ("trailing-newline", "https://storage.example.com/upload\n"),
    ("tab", "https://storage.example.com/\tupload"),
    ("bad-percent", "https://storage.example.com/%zz"),
    ("non-ascii-host", "https://exämple.com/upload"),
    ("bad-port", "https://storage.example.com:http/upload"),
    ("pipe", "https://storage.example.com/a|b"),
    ("del-char", "http://storage.example.com/\x7f"),
    ("bracket-in-query", "https://storage.example.com/?a=[1]"),
    ("bad-ipv6", "http://[::1:999999]/cb"),
    ("ipv6-two-double-colons", "http://[1::2::3]/cb"),
    ("number", 42),  # (null: the required-field cases)
]
GOOD_URLS = [
    ("https", "https://storage.example.com/upload"),
    ("http", "http://storage.example.com/upload"),
    ("port", "http://localhost:8787/callback"),
    ("port-query", "https://api.example.com:8443/callback?token=abc&x=1"),
    ("fragment", "https://api.example.com/cb#done"),
    ("ipv4", "http://127.0.0.1:9000/x"),
    ("ipv6", "http://[::1]:8080/cb"),
    ("userinfo", "https://user:pass@api.example.com/cb"),
    ("no-path", "https://api.example.com"),
    ("encoded-space", "https://storage.example.com/my%20upload.mp3"),
    ("upper-scheme", "HTTPS://storage.example.com/upload"),  # schemes are case-insensitive (RFC 3986 3.1)
    ("mixed-scheme", "Http://storage.example.com/upload"),
    ("ipv6-full", "http://[2001:db8:0:0:0:0:0:1]/cb"),
    ("ipv6-v4-tail", "http://[::ffff:192.0.2.1]:9/cb"),
    ("ipv6-seven-groups", "http://[1::2:3:4:5:6:7]/cb"),
    ("sub-delims", "https://api.example.com/a;b=c,d!$&'()*+?x=1#f"),
]


def url_cases() -> list[Case]:
    cases = []
    for mode, (make, _) in MODES.items():  # every branch spells the URL rule out: each is tested
        for name in ("uploadUrl", "callBackUrl"):
            for vid, value in BAD_URLS:
                expected = "must be a string" if not isinstance(value, str) else "must be an absolute http(s) URL"
                cases.append(Case(f"{mode}-{name}-{vid}", make(**{name: value}), False, name,
                                  says=(f"{name}: {expected}",)))
            for vid, value in GOOD_URLS:
                cases.append(Case(f"{mode}-{name}-{vid}", make(**{name: value}), True))
    return cases


@pytest.mark.parametrize("vid, url", [(v, u) for v, u in BAD_URLS + GOOD_URLS if isinstance(u, str)])
def test_the_published_schema_alone_gives_the_url_verdict(vid, url):
    """In Draft 2020-12 `format` is an annotation unless a validator asserts it: a stock validator
    without a format checker, on the schema file as published, still refuses every bad URL (the
    pattern spells RFC 3986 out) and takes every good one; but for the grammar of an IPv6
    literal, which only `format` checks (schema_gen.HTTP_URL_PATTERN says why)."""
    from jsonschema import Draft202012Validator

    from mock_server.spec import schema

    stock = Draft202012Validator(schema("upload-cover-request.json"))  # no format_checker
    good = url in dict(GOOD_URLS).values() or vid in ("bad-ipv6", "ipv6-two-double-colons")
    assert stock.is_valid(body(uploadUrl=url)) is good, vid


def other_cases() -> list[Case]:
    page_example = {  # the endpoint page's curl example, verbatim
        "uploadUrl": "https://storage.example.com/upload",
        "prompt": "A calm and relaxing piano track with soft melodies",
        "style": "Classical", "title": "Peaceful Piano Meditation", "customMode": True,
        "instrumental": True, "model": "V3_5", "negativeTags": "Heavy Metal, Upbeat Drums",
        "callBackUrl": "https://api.example.com/callback", "vocalGender": "m",
        "styleWeight": 0.65, "weirdnessConstraint": 0.65, "audioWeight": 0.65,
    }
    return [
        Case("page-example", page_example, True),
        Case("negativeTags-text", body(negativeTags="Heavy Metal"), True),
        Case("negativeTags-empty", body(negativeTags=""), True),
        Case("negativeTags-null", body(negativeTags=None), True),
        Case("negativeTags-number", body(negativeTags=3), False, "negativeTags",
             says=("negativeTags: must be a string",)),
        Case("negativeTags-list", custom(negativeTags=["Metal"]), False, "negativeTags",
             says=("negativeTags: must be a string",)),
        Case("unknown-field", body(foo=1, nested={"a": [1, 2]}), True),
        Case("custom-instrumental-null-prompt", custom(instrumental=True, prompt=None), True),
        Case("custom-instrumental-empty-prompt", custom(instrumental=True, prompt=""), True),
        # Everything missing: the first in the page's order is named, the rest counted.
        Case("only-uploadUrl", {"uploadUrl": "https://a.example/x"}, False, "callBackUrl",
             exact="Please enter callBackUrl (and 3 more problems)"),
        Case("no-discriminators", {"uploadUrl": "https://a.example/x", "callBackUrl": "https://b.example/cb",
                                   "prompt": "p"}, False, "customMode",
             exact="Please enter customMode (and 2 more problems)"),
    ]


ALL_CASES = (length_cases() + required_cases() + empty_and_null_cases() + non_custom_leave_empty_cases()
             + weight_cases() + vocal_gender_cases() + model_cases() + boolean_cases() + url_cases()
             + other_cases())


def params(cases: list[Case]):
    return [pytest.param(c, id=c.id) for c in cases]


def check(client, case: Case) -> None:
    r = client.post(URL, json=case.body, headers=AUTH)
    env = r.get_json()
    assert r.status_code == 200, env
    assert set(env) == {"code", "msg", "data"}
    if case.ok:
        assert (env["code"], env["msg"]) == (200, "success"), env["msg"]
        assert isinstance(env["data"]["taskId"], str) and env["data"]["taskId"]
        return
    assert env["code"] == 422 and env["data"] is None, env
    msg = env["msg"]
    if case.exact is not None:
        assert msg == case.exact
    assert case.field in msg, f"the 422 does not name {case.field}: {msg}"
    for fragment in case.says:
        assert fragment in msg, msg


def test_the_page_numbers_are_the_table():
    """The endpoint page's numbers, written once: an edit of schemas/model-limits.json shows up here."""
    assert LIMITS.non_custom_prompt == 400
    assert {m: (x.style, x.title, x.prompt) for m, x in LIMITS.models.items()} == {
        "V3_5": (200, 80, 3000), "V4": (200, 80, 3000),
        "V4_5": (1000, 100, 5000), "V4_5PLUS": (1000, 100, 5000),
    }


def test_the_case_lists_cover_every_model_and_mode():
    ids = {c.id for c in ALL_CASES}
    assert len(ids) == len(ALL_CASES), "case ids must be unique"
    for model in MODELS:
        for mode in ("custom-instr", "custom-vocal", "noncustom-instr", "noncustom-vocal"):
            assert any(i.startswith(f"{model}-{mode}-") for i in ids), (model, mode)
    assert any(c.ok for c in ALL_CASES) and any(not c.ok for c in ALL_CASES)


@pytest.mark.parametrize("case", params(length_cases()))
def test_lengths_at_each_models_limits(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(required_cases()))
def test_required_fields_per_mode(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(empty_and_null_cases()))
def test_empty_and_null_required_fields(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(non_custom_leave_empty_cases()))
def test_non_custom_style_and_title_must_be_left_empty(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(weight_cases()))
def test_weights_zero_to_one_in_hundredths(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(vocal_gender_cases()))
def test_vocal_gender_enum(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(model_cases()))
def test_model_enum(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(boolean_cases()))
def test_custom_mode_and_instrumental_are_real_booleans(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(url_cases()))
def test_upload_and_callback_urls(lenient_client, case):
    check(lenient_client, case)


@pytest.mark.parametrize("case", params(other_cases()))
def test_other_fields(lenient_client, case):
    check(lenient_client, case)


WEIGHT_LITERALS = [
    (b"0.29", True), (b"0.290", True), (b"2.9e-1", True), (b"1e-2", True), (b"1E-2", True),
    (b"1.0", True), (b"0", True), (b"-0", True), (b"-0.0", True), (b"1", True), (b"0.1e1", True),
    (b"100e-2", True), (b"0e-99999999999", True),
    (b"0.295", False), (b"1.0000001", False), (b"-0.01", False), (b"100", False),
    (b"1e308", False), (b"18446744073709551616", False),  # 2**64: bigger than any machine integer
    # a parser rounds these into the range (1.0, 0.0, -0.0): judged as written, they are not
    (b"1.0000000000000001", False), (b"0.99999999999999999", False), (b"0.01000000000000000001", False),
    (b"1e-400", False), (b"-1e-400", False), (b"1e-999999999", False), (b"1e-9999999999999999999", False),
    (b"-1e-9999999999999999999", False), (b"0e-9999999999999999999", True),  # beyond a Decimal's exponent
    (b"29999999.999999999e-8", False),  # 17 digits, a point among them
]


@pytest.mark.parametrize("text, msg", [
    # the key elsewhere (nested, in a string) only costs an exact reading: the top level decides
    (b'{"x": {"styleWeight": 1e-400}, "y": "\\"styleWeight\\": 1e-400", "styleWeight": 0.5}', None),
    (b'{"styleWeight" :\n 1.0000000000000001}', "styleWeight: must be between 0 and 1 (got 1.0000000000000001)"),
    # more keys than are looked at: read exactly anyway
    (b'{"y": [' + b",".join([b'"\\"styleWeight\\":0.5"'] * 20) + b'], "styleWeight": 1e-400}',
     "styleWeight: at most 2 decimal places, a multiple of 0.01 (got 1E-400)"),
    (b'{"audioWeight": -1e-9999999999999999999}', "audioWeight: must be between 0 and 1 (got -1e-9999999999999999999)"),
])
def test_weights_as_written_wherever_the_key_appears(lenient_client, text, msg):
    fields = orjson.dumps(body())[1:-1]
    r = lenient_client.post(URL, data=text[:1] + fields + b"," + text[1:], headers={**AUTH, "Content-Type": "application/json"})
    env = r.get_json()
    assert (env["code"], env["msg"]) == ((200, "success") if msg is None else (422, msg)), env


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("weight", ["styleWeight", "weirdnessConstraint", "audioWeight"])
@pytest.mark.parametrize("literal, ok", WEIGHT_LITERALS)
def test_weights_as_written_in_the_json_text(lenient_client, mode, weight, literal, ok):
    """The number as the client wrote it (exponents, trailing zeros, huge, beyond a double's
    digits), parsed by the fake itself; every weight, in every mode."""
    text = orjson.dumps(MODES[mode][0](**{weight: 12345})).replace(b"12345", literal)
    r = lenient_client.post(URL, data=text, headers={**AUTH, "Content-Type": "application/json"})
    env = r.get_json()
    assert r.status_code == 200
    if ok:
        assert env["code"] == 200, env
    else:
        assert env["code"] == 422 and env["msg"].startswith(f"{weight}: "), env


def test_several_problems_report_the_first_in_page_order_and_count_the_rest(lenient_client):
    r = lenient_client.post(URL, json=body(prompt="x" * 401, style="Jazz", audioWeight=2), headers=AUTH)
    env = r.get_json()
    assert env["code"] == 422
    assert env["msg"] == "prompt: at most 400 characters in non-custom mode (got 401) (and 2 more problems)"


@pytest.mark.parametrize("fields, msg", [
    ({"uploadUrl": "https://a.example/x y.mp3"},  # breaks format and pattern: one field to fix
     'uploadUrl: must be an absolute http(s) URL (got "https://a.example/x y.mp3")'),
    ({"styleWeight": 1.005}, "styleWeight: must be between 0 and 1 (got 1.005)"),  # range and decimals
    ({"vocalGender": 1}, "vocalGender: must be a string (or null / omitted), got number 1"),  # type and enum
    ({"styleWeight": 1.005, "vocalGender": 1},
     "vocalGender: must be a string (or null / omitted), got number 1 (and 1 more problem)"),
])
def test_more_problems_counts_other_fields_not_keywords(lenient_client, fields, msg):
    env = lenient_client.post(URL, json=body(**fields), headers=AUTH).get_json()
    assert env == {"code": 422, "msg": msg, "data": None}


@pytest.mark.parametrize("make, field", [(custom, "title"), (custom, "prompt"), (body, "prompt"),
                                         (body, "uploadUrl"), (body, "callBackUrl"), (body, "customMode")])
def test_a_required_field_given_null_says_null_once(lenient_client, make, field):
    msg = lenient_client.post(URL, json=make(**{field: None}), headers=AUTH).get_json()["msg"]
    assert msg.startswith(f"{field}: must be a") and msg.endswith(", got null"), msg


def test_a_missing_field_is_reported_before_a_bad_value(lenient_client):
    r = lenient_client.post(URL, json=custom(title="t" * 500, style=...), headers=AUTH)
    assert r.get_json()["msg"].startswith("Please enter style (required when customMode is true")


def test_callback_url_missing_says_what_the_real_service_says(lenient_client):
    """API_NOTES: a live missing callBackUrl answered 422 "Please enter callBackUrl"."""
    r = lenient_client.post(URL, json=body(callBackUrl=...), headers=AUTH)
    assert r.get_json() == {"code": 422, "msg": "Please enter callBackUrl", "data": None}
