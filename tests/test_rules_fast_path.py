"""The fast verdict (one branch, picked by the discriminators) equals the full oneOf verdict."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mock_server import rules
from mock_server.spec import validator

FULL = validator(rules.REQUEST_SCHEMA)

text = st.one_of(st.none(), st.text(max_size=3), st.text(min_size=78, max_size=82),
                 st.text(min_size=398, max_size=402))
value = st.one_of(st.none(), st.booleans(), st.integers(-1, 2), st.floats(-0.5, 1.5),
                  st.sampled_from([0.29, 0.295, 0.01, 1.0, "0.5"]), text)
url = st.sampled_from(["https://a.example/x", "http://127.0.0.1:9/cb", "ftp://x", "not a url", "", None])
changes = st.fixed_dictionaries({}, optional={
    "uploadUrl": url, "callBackUrl": url,
    "customMode": st.one_of(st.booleans(), value), "instrumental": st.one_of(st.booleans(), value),
    "model": st.sampled_from(["V3_5", "V4", "V4_5", "V4_5PLUS", "V5", "", None]),
    "prompt": text, "style": text, "title": text, "negativeTags": value,
    "vocalGender": st.sampled_from(["m", "f", "x", "", None]),
    "styleWeight": value, "weirdnessConstraint": value, "audioWeight": value,
})
BASES = [
    {"uploadUrl": "https://a.example/x", "callBackUrl": "https://b.example/cb", "customMode": False,
     "instrumental": False, "model": "V3_5", "prompt": "calm piano"},
    {"uploadUrl": "https://a.example/x", "callBackUrl": "https://b.example/cb", "customMode": True,
     "instrumental": True, "model": "V4_5", "style": "Jazz", "title": "T"},
    {"uploadUrl": "https://a.example/x", "callBackUrl": "https://b.example/cb", "customMode": True,
     "instrumental": False, "model": "V4", "style": "Jazz", "title": "T", "prompt": "la la"},
]
# A valid base with a few fields changed or dropped: both verdicts come up often.
bodies = st.builds(
    lambda base, change, drop: {k: v for k, v in {**base, **change}.items() if k not in drop},
    st.sampled_from(BASES), changes, st.sets(st.sampled_from(sorted(BASES[2])), max_size=2))
seen = {True: 0, False: 0}


def test_the_branches_provably_exclude_each_other():
    assert rules._exclusive()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_fast_verdict_equals_full_one_of(body):
    verdict = FULL.is_valid(body)
    seen[verdict] += 1
    assert rules.schema_accepts(body) == verdict


def test_the_generated_bodies_had_both_verdicts():  # runs after the property test (file order)
    assert seen[True] >= 20 and seen[False] >= 100, seen


def test_fast_verdict_on_the_page_example():
    body = {"uploadUrl": "https://storage.example.com/upload", "prompt": "A calm piano", "style": "Classical",
            "title": "Peaceful", "customMode": True, "instrumental": True, "model": "V3_5",
            "callBackUrl": "https://api.example.com/callback", "styleWeight": 0.65}
    assert rules.schema_accepts(body) and FULL.is_valid(body)
    assert not rules.schema_accepts({**body, "styleWeight": 0.655}) and not FULL.is_valid({**body, "styleWeight": 0.655})


def test_every_branch_compiles_to_a_fast_predicate():
    from mock_server.fastschema import compile_schema

    for branch in rules._branches():
        compile_schema(branch)  # raises Unsupported if a keyword were not compiled


def test_an_unknown_keyword_is_refused_not_ignored():
    import pytest

    from mock_server.fastschema import Unsupported, compile_schema

    with pytest.raises(Unsupported):
        compile_schema({"type": "object", "dependentRequired": {"a": ["b"]}})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                 st.sampled_from(["m", "f", "a", 1.0, 0]), st.lists(st.sampled_from(["m", 1]), max_size=2),
                 st.dictionaries(st.sampled_from(["m"]), st.none(), max_size=1)))
def test_compiled_keywords_match_jsonschema_on_scalars(x):
    from mock_server.fastschema import compile_schema
    from mock_server.spec import validator_for

    for schema in ({"type": "number"}, {"type": "integer"}, {"type": ["string", "null"]}, {"const": True},
                   {"const": False}, {"const": 1}, {"const": "a"}, {"enum": ["m", "f", None]}, {"enum": ["m", "f"]},
                   {"enum": [1, "a", True]}, {"type": "boolean"}, {"type": "object"}, {"type": "array"},
                   {"minimum": 0, "maximum": 1, "multipleOf": 0.01},
                   {"maxLength": 2, "minLength": 1}, {"format": "uri"}, {"pattern": "^a"}):
        assert compile_schema(schema)(x) == validator_for(schema).is_valid(x), (schema, x)


def test_remembered_format_verdicts_are_the_fresh_ones(monkeypatch):
    from mock_server import fastschema
    from mock_server.spec import FORMATS

    monkeypatch.setattr(fastschema, "FORMAT_MEMO_SIZE", 4)
    monkeypatch.setattr(fastschema, "_format_memo", {})
    values = ["https://a.example/x", "not a url", "http://127.0.0.1:9/cb", "", "ftp://x", "https://a.example/x",
              "not a url", "http://" + "a" * 3000, 5, None]
    for _ in range(3):  # fresh, remembered, and again after the memo was emptied for being full
        for v in values:
            assert fastschema.format_ok(v, "uri") == FORMATS.conforms(v, "uri"), v
            assert len(fastschema._format_memo) <= 4
    assert not fastschema.format_ok("not a url", "uri") and fastschema.format_ok("https://a.example/x", "uri")
    assert all(len(v) <= fastschema.FORMAT_MEMO_MAX_LEN for _, v in fastschema._format_memo)


def test_format_verdicts_are_remembered_up_to_the_length_bound(monkeypatch):
    from mock_server import fastschema

    monkeypatch.setattr(fastschema, "_format_memo", {})
    bound = fastschema.FORMAT_MEMO_MAX_LEN
    for length, kept in ((bound - 1, True), (bound, True), (bound + 1, False)):
        value = "https://a.example/" + "a" * (length - len("https://a.example/"))
        assert len(value) == length
        assert fastschema.format_ok(value, "uri") is True
        assert (("uri", value) in fastschema._format_memo) is kept, length
