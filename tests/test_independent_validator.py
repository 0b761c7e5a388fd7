"""A second JSON Schema implementation agrees with the fake on accept/reject.

The independent validator is **jschon** (pure Python, written apart from python-jsonschema,
implements draft 2020-12 natively). It is given the same file the fake validates with,
schemas/upload-cover-request.json, and nothing else of the fake's code.

jschon's traps, and how each is neutralised here (so that a disagreement means a real bug):

1. `format` is an annotation: jschon asserts a format only when the catalog enables it,
   and it ships no "uri" checker at all. We enable "uri" and register our own strict RFC 3986
   checker below (`rfc3986_uri`), written from the RFC's ABNF and matched with `fullmatch`,
   so it shares no code with the fake's checker (rfc3986-validator).
2. `pattern` is compiled with Python's `re` and applied with `search`: `$` also matches
   before a trailing newline, and `\\s` is not ECMA-262's `\\s` (Python adds \\x1c-\\x1f and
   \\x85, lacks \\ufeff). The schema's URL pattern uses no `$` (its end anchor is `(?![\\s\\S])`),
   and every character where the two `\\s` differ is refused by the "uri" format anyway.
   `test_trap_...` pin both facts.
3. `multipleOf` computes `Decimal(f"{x}") % Decimal("0.01")`: the shortest repr of the
   float, the same choice as the fake, so 0.29 is a multiple (stock python-jsonschema says
   no). For |x| of about 1e26 and more the default 28-digit context raises, and jschon reports
   "not a multiple": wrong, but no verdict depends on it since `maximum: 1` refuses those
   numbers too. Pinned by `test_trap_multipleof_on_huge_numbers`.
4. Numbers: jschon's JSON accepts only int/float (no Decimal), so it cannot be handed exact
   decimals. Both sides are given what orjson (the fake's parser) makes of the very same
   bytes, i.e. IEEE doubles: what every JSON client and the real service work with.
5. Booleans are not numbers, and `const: false` is not 0: jschon types a bool as "boolean"
   before looking at int, and compares type-aware. Pinned too.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jschon import JSON, JSONSchema, create_catalog
from jschon.vocabulary.format import format_validator

from conftest import AUTH, body
from mock_server.limits import table
from mock_server.paths import UPLOAD_COVER_REQUEST
from mock_server.rules import check_upload_cover
from test_rules import ALL_CASES, BAD_URLS, GOOD_URLS, MODELS, WEIGHT_VALUES

URL = "/api/v1/generate/upload-cover"
# jschon resolves URIs with the `rfc3986` package, whose old API warns on every schema load.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:rfc3986")


def dumps(value) -> bytes:
    """The bytes a client sends (the stdlib, not orjson: orjson refuses integers over 64 bits)."""
    return json.dumps(value, ensure_ascii=False).encode()

# -- an RFC 3986 "URI" checker of our own (section 3 and appendix A) --------------------------
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"  # IPv4address is a reg-name syntactically
_IP_LITERAL = r"\[(?P<ip>[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[" + _UNRESERVED + _SUB_DELIMS + r":]+)\]"
_AUTHORITY = rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?"
_HIER_PART = (rf"(?://{_AUTHORITY}(?:/{_SEGMENT})*"  # "//" authority path-abempty
              rf"|/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"  # path-absolute
              rf"|{_SEGMENT_NZ}(?:/{_SEGMENT})*"  # path-rootless
              r"|)")  # path-empty
_QUERY = rf"(?:{_PCHAR}|[/?])*"
URI_RE = re.compile(rf"[A-Za-z][A-Za-z0-9+\-.]*:{_HIER_PART}(?:\?{_QUERY})?(?:#{_QUERY})?", re.ASCII)


def rfc3986_uri(value: str) -> None:
    """Raise ValueError unless `value` is an RFC 3986 URI (scheme required)."""
    m = URI_RE.fullmatch(value)  # fullmatch: no "$ before a trailing newline" trap
    if m is None:
        raise ValueError("not an RFC 3986 URI")
    ip = m.group("ip")
    if ip and not ip.lower().startswith("v"):
        try:
            ipaddress.IPv6Address(ip)
        except ValueError:
            raise ValueError("not an IPv6 address in brackets") from None


CATALOG = f"kie-mock-independent-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def independent() -> JSONSchema:
    format_validator("uri")(rfc3986_uri)  # registered before the schema is built (jschon binds then)
    catalog = create_catalog("2020-12", name=CATALOG)
    catalog.enable_formats("uri")
    schema = JSONSchema.loadf(UPLOAD_COVER_REQUEST, catalog=CATALOG)
    assert schema.validate().valid, "jschon finds the request schema invalid against the 2020-12 metaschema"
    return schema


def jschon_accepts(schema: JSONSchema, instance) -> bool:
    return schema.evaluate(JSON(instance)).valid


def fake_accepts(client, raw: bytes) -> bool:
    env = client.post(URL, data=raw, headers={**AUTH, "Content-Type": "application/json"}).get_json()
    assert env["code"] in (200, 422), env
    return env["code"] == 200


# -- the independent URI checker is itself checked ------------------------------------------------
@pytest.mark.parametrize("value", [
    "https://storage.example.com/upload", "http://[::1]:8080/cb", "http://[v1.x]/", "mailto:a@example.com",
    "urn:isbn:0451450523", "https://u:p@h/p?q=1&r=%20#f", "http://a.example:99999/", "file:///etc/passwd",
])
def test_our_uri_checker_accepts_rfc3986_uris(value):
    rfc3986_uri(value)


@pytest.mark.parametrize("value", [
    "not a uri", "/relative", "//no-scheme.example", "https://a.example/%zz", "https://exämple.com/",
    "https://a.example/\n", "https://a.example\n", "http://[::zz]/", "http://a.example:http/", "1http://a/",
    "https://a.example/<x>", "https://a.example/\x7f",
])
def test_our_uri_checker_refuses_non_uris(value):
    with pytest.raises(ValueError):
        rfc3986_uri(value)


# -- the traps, pinned -----------------------------------------------------------------------------
def test_trap_format_is_only_an_annotation_unless_enabled():
    name = f"kie-mock-formats-off-{uuid.uuid4().hex[:8]}"
    create_catalog("2020-12", name=name)
    lax = JSONSchema({"$schema": "https://json-schema.org/draft/2020-12/schema", "format": "uri"}, catalog=name)
    assert jschon_accepts(lax, "not a uri")


def test_trap_dollar_matches_before_a_trailing_newline_in_python_re(independent):
    assert re.search(r"^https?://\S+$", "https://a.example\n")  # what `$` would have let through
    assert not jschon_accepts(independent, body(uploadUrl="https://a.example/x\n"))


def test_trap_multipleof_on_huge_numbers(independent):
    hundredth = JSONSchema({"$schema": "https://json-schema.org/draft/2020-12/schema", "multipleOf": 0.01},
                           catalog=CATALOG)
    assert jschon_accepts(hundredth, 0.29) and jschon_accepts(hundredth, 0.57)
    assert not jschon_accepts(hundredth, 0.295)
    assert not jschon_accepts(hundredth, 1e30)  # wrong (it is a multiple) ...
    assert not jschon_accepts(independent, body(styleWeight=1e30))  # ... but maximum refuses it anyway


def test_trap_booleans_and_numbers_stay_apart(independent):
    assert not jschon_accepts(independent, body(styleWeight=True))
    assert not jschon_accepts(independent, body(customMode=0))
    assert jschon_accepts(independent, body(styleWeight=1))


# -- agreement ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ALL_CASES])
def test_agrees_on_every_boundary_case(independent, lenient_client, case):
    raw = dumps(case.body)
    assert jschon_accepts(independent, orjson.loads(raw)) is case.ok
    assert fake_accepts(lenient_client, raw) is case.ok


# Values each field takes in generated bodies: valid ones and near misses.
LIM = table()
_LENGTHS = sorted({n for m in LIM.models.values() for lim in (m.style, m.title, m.prompt)
                   for n in (lim - 1, lim, lim + 1)} | {0, 1, LIM.non_custom_prompt, LIM.non_custom_prompt + 1})
_URLS = [u for _, u in GOOD_URLS + BAD_URLS] + ["https://a.example/\ufeff", "https://a.example/\x1c", "HTTPS://A.EXAMPLE/"]
_WEIGHTS = [v for _, v, _, _ in WEIGHT_VALUES] + [0.1 + 0.2, 0.3, 0.07, 1e-300, -1, 2**63, 0.5]
FIELD_VALUES = {
    "uploadUrl": st.sampled_from(_URLS),
    "callBackUrl": st.sampled_from(_URLS),
    "customMode": st.sampled_from([True, False, "true", 1, 0, None]),
    "instrumental": st.sampled_from([True, False, "false", 1, 0, None]),
    "model": st.sampled_from(MODELS + ["v3_5", "V5", "", None, 4]),
    "prompt": st.one_of(st.sampled_from(_LENGTHS).map(lambda n: "p" * n),
                        st.sampled_from([None, 7, "\U0001F3B5" * 80])),
    "style": st.one_of(st.sampled_from(_LENGTHS).map(lambda n: "s" * n), st.sampled_from([None, [], " "])),
    "title": st.one_of(st.sampled_from(_LENGTHS).map(lambda n: "t" * n), st.sampled_from([None, True, "é" * 100])),
    "negativeTags": st.sampled_from(["Heavy Metal", "", None, 3, ["x"]]),
    "vocalGender": st.sampled_from(["m", "f", None, "x", "", "M"]),
    "styleWeight": st.sampled_from(_WEIGHTS),
    "weirdnessConstraint": st.sampled_from(_WEIGHTS),
    "audioWeight": st.sampled_from(_WEIGHTS),
    "someUnknownField": st.sampled_from([1, "x", None, {"a": [1]}]),
}


@st.composite
def near_valid_bodies(draw) -> dict:
    """A valid body of a random mode and model, then 0-3 fields replaced by any pool value or dropped."""
    custom, instrumental = draw(st.booleans()), draw(st.booleans())
    model = draw(st.sampled_from(MODELS))
    lim = LIM.models[model]
    b = {"uploadUrl": "https://storage.example.com/upload", "callBackUrl": "https://api.example.com/callback",
         "customMode": custom, "instrumental": instrumental, "model": model}
    if custom:
        b["style"] = "s" * draw(st.integers(1, lim.style))
        b["title"] = "t" * draw(st.integers(1, lim.title))
        if not instrumental or draw(st.booleans()):
            b["prompt"] = "p" * draw(st.integers(1, lim.prompt))
    else:
        b["prompt"] = "p" * draw(st.integers(1, LIM.non_custom_prompt))
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            b.pop(name, None)
        else:
            b[name] = draw(FIELD_VALUES[name])
    return b


def test_agrees_on_generated_near_valid_bodies(independent, lenient_client):
    seen = {True: 0, False: 0}

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(near_valid_bodies())
    def agree(b):
        raw = dumps(b)
        theirs = jschon_accepts(independent, orjson.loads(raw))
        ours = fake_accepts(lenient_client, raw)
        assert ours is theirs, f"fake {'accepts' if ours else 'rejects'}, jschon disagrees: {b}"
        assert (check_upload_cover(orjson.loads(raw)) is None) is ours
        seen[ours] += 1

    agree()
    # Not vacuous: both verdicts occur often.
    assert seen[True] >= 60 and seen[False] >= 60, seen
