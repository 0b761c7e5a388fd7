"""openapi.yaml and schemas/: a valid OpenAPI 3.1 document whose every $ref resolves, and the
JSON Schema library traps the fake closes (mock_server/spec.py), pinned."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from conftest import body, custom_body
from mock_server.paths import OPENAPI, SCHEMAS
from mock_server.rules import check_upload_cover
from mock_server.spec import BASE, FORMATS, Validator, check_uri_format_available, schema, validator, validator_for

SPEC = yaml.safe_load(OPENAPI.read_text())
SCHEMA_FILES = sorted(SCHEMAS.glob("*.json"))


def _refs(node, where=""):
    """Every (location, $ref) in a document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield where, v
            else:
                yield from _refs(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _refs(v, f"{where}/{i}")


def _load(path: Path):
    return yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())


def _resolve(doc_path: Path, ref: str):
    """Follow `file#/json/pointer` from the document at doc_path; KeyError/FileNotFoundError if it dangles."""
    file_part, _, pointer = ref.partition("#")
    target = (doc_path.parent / file_part) if file_part else doc_path
    node = _load(target)
    for token in filter(None, pointer.split("/")):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _bundled() -> dict:
    """openapi.yaml with every external schema file inlined (so the validator sees their contents too)."""
    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("schemas/") and "#" not in ref:
                return _load(OPENAPI.parent / ref)
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node
    return inline(copy.deepcopy(SPEC))


def test_openapi_yaml_is_valid_openapi_3_1():
    assert SPEC["openapi"].startswith("3.1")
    validate_openapi(SPEC, base_uri=OPENAPI.resolve().as_uri())


def test_openapi_with_its_schema_files_inlined_is_still_valid():
    bundled = _bundled()
    assert not [r for _, r in _refs(bundled) if r.startswith("schemas/")]
    validate_openapi(bundled)


def test_the_validator_would_notice_a_broken_spec():
    broken = copy.deepcopy(SPEC)
    broken["paths"]["/api/v1/chat/credit"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = \
        {"type": "not-a-type"}
    with pytest.raises(Exception, match="not-a-type"):
        validate_openapi(broken, base_uri=OPENAPI.resolve().as_uri())


@pytest.mark.parametrize("doc", [OPENAPI, *SCHEMA_FILES], ids=lambda p: p.name)
def test_every_ref_resolves(doc):
    for where, ref in _refs(_load(doc)):
        if ref.startswith("https://") or ref.startswith("http://"):  # by $id: must be one of ours
            assert ref.split("#")[0].rsplit("/", 1)[-1] in {p.name for p in SCHEMA_FILES}, (where, ref)
            continue
        try:
            _resolve(doc, ref)
        except (KeyError, IndexError, FileNotFoundError) as exc:
            pytest.fail(f"{doc.name}{where}: $ref {ref!r} does not resolve ({exc!r})")


def test_the_spec_refers_to_the_schema_files_rather_than_copying_them():
    refs = {r for _, r in _refs(SPEC)}
    assert "schemas/upload-cover-request.json" in refs
    body_schema = SPEC["paths"]["/api/v1/generate/upload-cover"]["post"]["requestBody"]["content"]["application/json"]
    assert body_schema["schema"] == {"$ref": "schemas/upload-cover-request.json"}


@pytest.mark.parametrize("path", [p for p in SCHEMA_FILES if "$schema" in json.loads(p.read_text())],
                         ids=lambda p: p.name)
def test_schema_files_are_valid_draft_2020_12(path):
    Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_the_spec_describes_the_three_endpoints_bearer_auth_and_the_link():
    paths = SPEC["paths"]
    assert set(paths) >= {"/api/v1/generate/upload-cover", "/api/v1/generate/record-info", "/api/v1/chat/credit"}
    bearer = SPEC["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer") and SPEC["security"] == [{"bearerAuth": []}]
    link = paths["/api/v1/generate/upload-cover"]["post"]["responses"]["200"]["links"]["GetRecordInfo"]
    assert link["operationId"] == paths["/api/v1/generate/record-info"]["get"]["operationId"]
    assert link["parameters"] == {"taskId": "$response.body#/data/taskId"}


def test_the_spec_example_is_accepted_by_the_fake():
    request_body = SPEC["paths"]["/api/v1/generate/upload-cover"]["post"]["requestBody"]
    example = request_body["content"]["application/json"]["example"]
    assert check_upload_cover(example) is None


# -- the JSON Schema library traps ---------------------------------------------------------------
HUNDREDTHS = {"type": "number", "multipleOf": 0.01}


@pytest.mark.parametrize("value", [0.29, 0.57, 0.58, 0.07, 1.13])
def test_trap_stock_jsonschema_multipleof_rejects_exact_hundredths(value):
    """Binary floats: 0.29 / 0.01 == 28.999999999999996, so the stock validator says no."""
    assert not Draft202012Validator(HUNDREDTHS).is_valid(value)
    assert Validator(HUNDREDTHS).is_valid(value)


def test_the_weights_description_names_exactly_the_legal_values_a_stock_validator_refuses():
    """The schema tells users of other tools which weights their float-dividing validator will
    refuse: that list is what stock jsonschema does refuse of the 101 legal values, no more, no less."""
    from mock_server.schema_gen import FLOAT_DIVISION_REFUSES, WEIGHT

    stock = Draft202012Validator(HUNDREDTHS)
    refused = [f"{i / 100:.2f}" for i in range(101) if not stock.is_valid(float(f"{i / 100:.2f}"))]
    assert refused == FLOAT_DIVISION_REFUSES and len(refused) == 10
    assert all(Validator(HUNDREDTHS).is_valid(float(v)) for v in refused)
    assert ", ".join(refused) in WEIGHT["description"]


@pytest.mark.parametrize("value, ok", [
    (0.65, True), (1e-2, True), (0, True), (1, True), (-0.0, True), (1.0, True),
    (0.295, False), (0.001, False), (5e-324, False), (0.1 + 0.2, False),  # 0.30000000000000004
    (1e30, True), (10**30, True), (1e308, True),  # huge numbers used to raise decimal.InvalidOperation (a 500)
])
def test_our_multipleof_works_on_the_shortest_decimal_repr(value, ok):
    assert Validator(HUNDREDTHS).is_valid(value) is ok


def test_trap_booleans_are_not_numbers():
    for v in (Draft202012Validator({"type": "number"}), Validator({"type": "number"}),
              Validator({"type": "integer"})):
        assert not v.is_valid(True) and not v.is_valid(False)
    assert not validator("upload-cover-request.json").is_valid(body(styleWeight=True))
    assert not validator("upload-cover-request.json").is_valid(body(customMode=0))  # const false is not 0


def test_trap_format_uri_is_enforced_only_with_a_checker():
    uri = {"type": "string", "format": "uri"}
    assert Draft202012Validator(uri).is_valid("not a uri")  # an annotation by default
    assert not Validator(uri, format_checker=FORMATS).is_valid("not a uri")
    assert not FORMATS.conforms("not a uri", "uri")
    check_uri_format_available()  # the fake refuses to start when it would not be enforced


def test_trap_dollar_before_a_trailing_newline_is_not_used_in_any_pattern():
    """Python's `$` matches before a final "\\n" (ECMA-262's does not): no pattern of any schema
    (client input, or the responses and callbacks a contract run judges) relies on it."""
    assert re.search(r"^a$", "a\n")
    found = [(path.name, where, p) for path in sorted(SCHEMAS.glob("*.json"))
             for where, p in _patterns(json.loads(path.read_text()))]
    assert len(found) >= 3 and not [f for f in found if f[2].endswith("$")], found
    request = schema("upload-cover-request.json")
    url = request["oneOf"][0]["properties"]["uploadUrl"]
    assert not Validator(url, format_checker=FORMATS).is_valid("https://a.example/x\n")
    assert Validator(url, format_checker=FORMATS).is_valid("https://a.example/x")


def test_trap_backslash_d_matches_any_unicode_digit_so_patterns_spell_out_0_to_9():
    """Python's `\\d` (str patterns) matches every Unicode decimal digit; ECMA-262's only 0-9."""
    assert re.fullmatch(r"\d", "\uff12")  # FULLWIDTH DIGIT TWO
    found = [p for path in SCHEMAS.glob("*.json") for _, p in _patterns(json.loads(path.read_text()))]
    assert not [p for p in found if "\\d" in p]
    track = schema("callback-track.json")["properties"]["createTime"]
    check = Validator(track, format_checker=FORMATS)
    assert check.is_valid("2026-11-25 18:44:48") and check.is_valid(1764096288000)
    for bad in ("2026-11-25 18:44:48\n", "\uff12026-11-25 18:44:48", "2026-11-25T18:44:48", "2026-11-25 18:44"):
        assert not check.is_valid(bad), bad


def _patterns(node, where=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                yield where, v
            else:
                yield from _patterns(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _patterns(v, f"{where}/{i}")


def test_trap_multipleof_stays_ours_through_a_ref_into_a_file_with_its_own_schema_keyword():
    """jsonschema picks the validator class anew from "$schema" when a $ref enters a resource
    that declares one: the stock 2020-12 class, whose multipleOf refuses 0.29. Every file in
    schemas/ declares it, so a schema that refers to another must still be checked by ours."""
    via_ref = validator_for({"$ref": BASE + "upload-cover-request.json"})
    assert via_ref.is_valid(custom_body(styleWeight=0.29, audioWeight=0.57))
    assert not via_ref.is_valid(custom_body(styleWeight=0.295))
    assert not via_ref.is_valid(custom_body(styleWeight=True))
    assert schema("upload-cover-request.json")["$schema"].endswith("2020-12/schema")  # the file, as written
