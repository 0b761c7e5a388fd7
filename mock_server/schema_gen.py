"""Generate schemas/upload-cover-request.json from the model-limit table.

The request schema is a `oneOf` of fully spelled-out branches, one per
(customMode, instrumental, group of models sharing limits). Spelled-out branches
(rather than nested if/then) are what schema-driven generators (schemathesis,
hypothesis-jsonschema) turn into boundary-length bodies. The branches are mutually
exclusive through `const` on customMode/instrumental and `enum` on model.

Run `python -m mock_server.schema_gen` after editing schemas/model-limits.json;
tests/test_schema_gen.py fails while the committed file is stale.
"""

from __future__ import annotations

import json
import sys
from itertools import groupby

from .limits import LimitTable, table
from .paths import UPLOAD_COVER_REQUEST

SCHEMA_ID = "https://kie-mock.local/schemas/upload-cover-request.json"

# An absolute http(s) URL, as RFC 3986 spells one (`format: uri` says the same, but in Draft
# 2020-12 a format is only an annotation unless a validator is told to assert it: the pattern
# alone gives any validator the fake's verdict). The scheme in either case (schemes are
# case-insensitive); optional "userinfo@"; a host that is not empty ("http://:80/x" and
# "http://user@/x" have none): a name or IPv4 address, or an IPv6 literal in brackets; an optional
# port of digits; then path, query and fragment. Every character is one RFC 3986 allows there, or
# a %-escape of two hex digits (no spaces, no "|", no non-ASCII: an IRI is not a URI). The one
# thing left to `format` is the IPv6 literal's own grammar ("[1::2::3]"): spelled out, its nine
# forms made schemathesis's generation 17 times slower (kie-mock verify). The end
# anchor is `(?![\s\S])`, not `$`: in Python's `re` (jsonschema, jschon, hypothesis) `$` also
# matches before a trailing newline; the lookahead means "end of input" in ECMA-262 (what JSON
# Schema specifies) and in Python alike.
_PCT = "%[0-9A-Fa-f]{2}"
_SUB = "!$&'()*+,;="
_UNRESERVED = r"A-Za-z0-9\-._~"


HTTP_URL_PATTERN = (
    "^[Hh][Tt][Tt][Pp][Ss]?://"
    rf"(?:(?:[{_UNRESERVED}{_SUB}:]|{_PCT})*@)?"  # userinfo
    rf"(?:\[[0-9A-Fa-f:.]+\]|(?:[{_UNRESERVED}{_SUB}]|{_PCT})+)"  # host
    "(?::[0-9]*)?"  # port
    rf"(?:/(?:[{_UNRESERVED}{_SUB}:@]|{_PCT})*)*"  # path
    rf"(?:\?(?:[{_UNRESERVED}{_SUB}:@/?]|{_PCT})*)?"  # query
    rf"(?:#(?:[{_UNRESERVED}{_SUB}:@/?]|{_PCT})*)?"  # fragment
    r"(?![\s\S])"
)
HTTP_URL = {"type": "string", "format": "uri", "pattern": HTTP_URL_PATTERN}
# Which legal weights a validator that divides binary floats refuses (0.07 / 0.01 is
# 7.000000000000001): named in the schema, for whoever loads it into another tool.
FLOAT_DIVISION_REFUSES = [f"{i / 100:.2f}" for i in range(101) if (i / 100 / 0.01) % 1]
WEIGHT = {"type": ["number", "null"], "minimum": 0, "maximum": 1, "multipleOf": 0.01,
          "description": "0 to 1 with at most 2 decimal places. multipleOf is meant on the decimal as written: a "
                         "validator that divides binary floats (Python jsonschema's default, Ajv without "
                         "multipleOfPrecision, Stoplight Prism) refuses " + ", ".join(FLOAT_DIVISION_REFUSES)
                         + ", which are legal and which kie-mock accepts."}


def _common(models: list[str]) -> dict:
    """Properties whose rule does not depend on the mode (spelled out in every branch)."""
    return {
        "uploadUrl": {**HTTP_URL, "description": "Source audio to cover (absolute http(s) URL)."},
        "callBackUrl": {**HTTP_URL, "description": "Receives the text/first/complete callbacks."},
        "model": {"type": "string", "enum": models},
        "negativeTags": {"type": ["string", "null"]},
        # "" is "not given", as null ("left empty" in non-custom mode, as style and title)
        "vocalGender": {"type": ["string", "null"], "enum": ["m", "f", "", None]},
        "styleWeight": dict(WEIGHT),
        "weirdnessConstraint": dict(WEIGHT),
        "audioWeight": dict(WEIGHT),
    }


def _text(limit: int, required: bool) -> dict:
    if required:
        return {"type": "string", "minLength": 1, "maxLength": limit}
    return {"type": ["string", "null"], "maxLength": limit}


def _branch(title: str, condition: str, scope: str, custom: bool, instrumental: bool | None,
            models: list[str], props: dict, required: list[str]) -> dict:
    properties = {
        "customMode": {"type": "boolean", "const": custom},
        "instrumental": {"type": "boolean"} if instrumental is None
        else {"type": "boolean", "const": instrumental},
        **_common(models),
        **props,
    }
    return {
        "title": title,
        "x-condition": condition,
        "x-limit-scope": scope,
        "type": "object",
        "required": ["uploadUrl", "customMode", "instrumental", "model", "callBackUrl", *required],
        "properties": properties,
    }


def build(t: LimitTable | None = None) -> dict:
    t = t or table()
    branches = [
        _branch(
            "Non-custom mode", "customMode is false", "in non-custom mode",
            custom=False, instrumental=None, models=t.model_names,
            props={
                "prompt": _text(t.non_custom_prompt, required=True),
                # The page: "In Non-custom Mode: Leave empty" (style, title).
                "style": {"type": ["string", "null"], "maxLength": 0},
                "title": {"type": ["string", "null"], "maxLength": 0},
            },
            required=["prompt"],
        )
    ]
    # Models that share limits share a branch.
    key = lambda m: (m.style, m.title, m.prompt)  # noqa: E731
    groups = [list(g) for _, g in groupby(sorted(t.models.values(), key=key), key=key)]
    for instrumental in (True, False):
        for group in groups:
            names = [m.name for m in group]
            lim = group[0]
            mode = "instrumental" if instrumental else "with lyrics"
            branches.append(_branch(
                f"Custom mode, {mode}, {' / '.join(names)}",
                f"customMode is true and instrumental is {str(instrumental).lower()}",
                "for model {model}",
                custom=True, instrumental=instrumental, models=names,
                props={
                    "style": _text(lim.style, required=True),
                    "title": _text(lim.title, required=True),
                    "prompt": _text(lim.prompt, required=not instrumental),
                },
                required=["style", "title"] + ([] if instrumental else ["prompt"]),
            ))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "UploadCoverRequest",
        "description": "Body of POST /api/v1/generate/upload-cover. GENERATED from "
                       "schemas/model-limits.json by `python -m mock_server.schema_gen`: do not edit.",
        "type": "object",
        "oneOf": branches,
    }


def render(t: LimitTable | None = None) -> str:
    return json.dumps(build(t), indent=2) + "\n"


def main() -> int:
    UPLOAD_COVER_REQUEST.write_text(render())
    print(f"wrote {UPLOAD_COVER_REQUEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
