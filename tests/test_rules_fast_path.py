"""The fast verdict (one branch, picked by the discriminators) equals the full oneOf verdict."""

from __future__ import annotations

import pytest
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


# -- the applicators and $ref (the callback schema) ------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False)
                    | st.sampled_from(["", "a", "https://a.example/x.mp3", "not a url", "2025-01-01 00:00:00"]),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(["a", "b", "id"]), children, max_size=3),
                    max_leaves=8)
APPLICATOR_SCHEMAS = (
    {"minItems": 2}, {"maxItems": 0}, {"minItems": 1, "maxItems": 2}, {"items": {"type": "string"}},
    {"items": {"type": "object", "required": ["id"]}}, {"items": False}, {"items": True},
    {"contains": {"const": 1}}, {"contains": {"type": "array"}}, {"exclusiveMinimum": 0}, {"exclusiveMaximum": 1},
    {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]},
    {"oneOf": [{"type": "number"}, {"type": "integer"}]}, {"oneOf": [{"const": ""}, {"format": "uri"}]},
    {"allOf": [{"type": "string"}, {"minLength": 1}]}, {"anyOf": [{"const": ""}, {"type": "string", "format": "uri"}]},
    {"type": "object", "properties": {"a": {"items": {"anyOf": [{"type": "null"}, {"minItems": 1}]}}}},
)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_compiled_applicators_match_jsonschema(x):
    from mock_server.fastschema import compile_schema
    from mock_server.spec import validator_for

    for schema in APPLICATOR_SCHEMAS:
        assert compile_schema(schema)(x) == validator_for(schema).is_valid(x), (schema, x)


@pytest.mark.parametrize("schema, cases", [
    ({"minItems": 2}, [([1], False), ([1, 2], True), ([1, 2, 3], True), ("ab", True)]),
    ({"maxItems": 2}, [([1], True), ([1, 2], True), ([1, 2, 3], False), ({}, True)]),
    ({"exclusiveMinimum": 0}, [(-1e-9, False), (0, False), (0.0, False), (1e-9, True), (True, True)]),
    ({"exclusiveMaximum": 1}, [(0.999, True), (1, False), (1.0, False), (1.001, False), ("2", True)]),
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, [(1.5, True), (1, False), (1.0, False), ("1", False)]),
])
def test_compiled_array_and_exclusive_bounds_one_below_at_and_above(schema, cases):
    """At each bound, compiled and jsonschema agree, and on the verdict written here (booleans
    are not numbers: a bound says nothing about true)."""
    from mock_server.fastschema import compile_schema
    from mock_server.spec import validator_for

    for x, expected in cases:
        assert compile_schema(schema)(x) is expected, (schema, x)
        assert validator_for(schema).is_valid(x) is expected, (schema, x)


def test_ref_needs_a_registry_and_a_prefix_items_schema_is_refused():
    from mock_server.fastschema import Unsupported, compile_schema

    with pytest.raises(Unsupported):
        compile_schema({"$ref": "callback-track.json"})
    with pytest.raises(Unsupported):
        compile_schema({"prefixItems": [{"type": "string"}], "items": False})
    with pytest.raises(Unsupported):
        compile_schema({"contains": {"const": 1}, "minContains": 2})


def _callback_bodies() -> list:
    """A callback of every stage, of a normal and of a failing task, and one with epoch createTime."""
    from mock_server import lifecycle
    from mock_server.config import Config
    from mock_server.scenarios import Scenario

    out = []
    for create_time in ("text", "epoch_ms"):
        cfg = Config(create_time=create_time)
        body_ = {"uploadUrl": "https://storage.example.com/a.mp3", "prompt": "calm", "customMode": False,
                 "instrumental": False, "model": "V4_5", "callBackUrl": "http://127.0.0.1:9/cb"}
        task = lifecycle.new_task(body_, "k", 1_750_000_000.0, cfg, "http://127.0.0.1:8787", Scenario(), 12)
        for stage in ("text", "first", "complete"):
            task.update(lifecycle.apply_stage(task, stage))
            out.append(lifecycle.callback_body(task, stage))
        failed = lifecycle.new_task(body_, "k", 1_750_000_000.0, cfg, "http://127.0.0.1:8787",
                                    Scenario.parse("fail-501"), 12)
        failed.update(lifecycle.apply_stage(failed, "error", 501))
        out.append(lifecycle.callback_body(failed, "error"))
    return out


def _paths(doc, at=()):
    yield at
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*at, i))


def _changed(doc, path, value, delete):
    import copy

    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def test_every_callback_the_fake_makes_passes_both_checks():
    from mock_server.fastschema import checker
    from mock_server.spec import validator

    bodies = _callback_bodies()
    assert {b["data"]["callbackType"] for b in bodies} == {"text", "first", "complete", "error"}
    for b in bodies:
        assert checker("callback.json")(b) and validator("callback.json").is_valid(b), b


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_callback_check_matches_jsonschema_on_changed_callbacks(data):
    """A real callback with one value replaced (or one key or item removed) anywhere in it: the
    compiled check and jsonschema give the same verdict."""
    from mock_server.fastschema import checker
    from mock_server.spec import validator

    doc = data.draw(st.sampled_from(_CALLBACKS))
    path = data.draw(st.sampled_from(list(_paths(doc))))
    delete = bool(path) and data.draw(st.booleans())
    value = None if delete else data.draw(JSON)
    changed = _changed(doc, path, value, delete)
    verdict = checker("callback.json")(changed)
    assert verdict == validator("callback.json").is_valid(changed), (path, value, delete)
    _VERDICTS.add(verdict)


def test_the_changed_callbacks_had_both_verdicts():  # runs after the property test (file order)
    assert _VERDICTS == {True, False}


_CALLBACKS = _callback_bodies()
_VERDICTS: set = set()


# -- found in review ------------------------------------------------------------------------------------
def test_nan_meets_the_bounds_as_jsonschema_has_it():
    from mock_server.fastschema import compile_schema
    from mock_server.spec import validator_for

    for kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        schema = {kw: 0}
        assert compile_schema(schema)(float("nan")) == validator_for(schema).is_valid(float("nan")), kw


def test_what_the_compiler_cannot_follow_is_refused_not_guessed():
    from referencing import Registry, Resource

    from mock_server.fastschema import Unsupported, compile_schema

    nested_id = {"required": ["root_only"], "properties": {
        "c": {"$id": "https://x.example/child.json", "properties": {"self": {"$ref": "#"}}}}}
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}
    registry = Registry().with_resource("https://x.example/d7.json", Resource.from_contents(draft7))
    resolver = registry.resolver("https://x.example/root.json")
    deep = {"type": "array"}
    for _ in range(25):
        deep = {"items": deep}
    for schema, res in ((nested_id, None), ({"$ref": "d7.json"}, resolver), ({"minItems": 1.5}, None),
                        ({"maxLength": True}, None), (deep, None), ({"$ref": "missing.json"}, resolver)):
        with pytest.raises(Unsupported):
            compile_schema(schema, res)
    assert compile_schema({"minItems": 2.0})([1, 2]) and not compile_schema({"minItems": 2.0})([1])


def test_the_callback_check_falls_back_to_jsonschema(monkeypatch):
    from mock_server import fastschema
    from mock_server.spec import validator

    def refuse(*a, **kw):
        raise fastschema.Unsupported("a keyword added to the schema one day")

    monkeypatch.setattr(fastschema, "compile_schema", refuse)
    check = fastschema.checker.__wrapped__("callback.json")
    assert check == validator("callback.json").is_valid
    assert all(check(b) for b in _CALLBACKS) and not check({"code": 200})


def test_every_schema_file_compiles_its_refs_into_sibling_files_included():
    """The compiled check is what the scheduler uses on every callback: no file may fall back
    to jsonschema unnoticed (a $ref into a whole file, with its $id, is compiled)."""
    import json

    from mock_server import fastschema
    from mock_server.paths import SCHEMAS

    names = [p.name for p in sorted(SCHEMAS.glob("*.json")) if "$schema" in json.loads(p.read_text())]
    assert "callback.json" in names
    for name in names:
        assert hasattr(fastschema.checker.__wrapped__(name), "source"), f"{name} is not compiled"
