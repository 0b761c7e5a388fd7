"""Compile a JSON Schema (the small set of keywords the request schema uses) into a plain
Python predicate: the same verdict as the jsonschema Validator of spec.py, about ten times
faster, for the hot path of upload-cover.

Only the verdict is compiled; the reasons for a rejection still come from jsonschema
(rules.diagnose). A schema with any other keyword raises Unsupported, and the caller falls
back to jsonschema. tests/test_rules_fast_path.py compares the two on generated bodies.
"""

from __future__ import annotations

import re
from typing import Callable

from .spec import FORMATS, is_multiple

ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "examples", "default"}
Check = Callable[[object], bool]


class Unsupported(ValueError):
    pass


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TYPES: dict[str, Check] = {
    "string": lambda x: isinstance(x, str),
    "number": _is_number,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer()),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
}


def _equal(a, b) -> bool:
    """JSON equality for scalars: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        raise Unsupported("const/enum over objects or arrays")
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def compile_schema(schema: dict) -> Check:
    checks: list[Check] = []
    for kw, value in schema.items():
        if kw in ANNOTATIONS or kw.startswith("x-"):
            continue
        if kw == "type":
            names = [value] if isinstance(value, str) else list(value)
            preds = [_TYPES[n] for n in names]
            checks.append(lambda x, preds=preds: any(p(x) for p in preds))
        elif kw == "const":
            _equal(value, value)  # raises Unsupported for containers
            checks.append(lambda x, v=value: not isinstance(x, (dict, list)) and _equal(x, v))
        elif kw == "enum":
            for v in value:
                _equal(v, v)
            checks.append(lambda x, vs=tuple(value): not isinstance(x, (dict, list)) and any(_equal(x, v) for v in vs))
        elif kw == "minLength":
            checks.append(lambda x, n=value: not isinstance(x, str) or len(x) >= n)
        elif kw == "maxLength":
            checks.append(lambda x, n=value: not isinstance(x, str) or len(x) <= n)
        elif kw == "minimum":
            checks.append(lambda x, n=value: not _is_number(x) or x >= n)
        elif kw == "maximum":
            checks.append(lambda x, n=value: not _is_number(x) or x <= n)
        elif kw == "multipleOf":
            checks.append(lambda x, d=value: not _is_number(x) or is_multiple(x, d))
        elif kw == "pattern":
            rx = re.compile(value)
            checks.append(lambda x, rx=rx: not isinstance(x, str) or rx.search(x) is not None)
        elif kw == "format":
            checks.append(lambda x, f=value: FORMATS.conforms(x, f))
        elif kw == "required":
            checks.append(lambda x, req=tuple(value): not isinstance(x, dict) or all(k in x for k in req))
        elif kw == "properties":
            subs = [(name, compile_schema(sub)) for name, sub in value.items()]
            checks.append(lambda x, subs=subs: not isinstance(x, dict)
                          or all(name not in x or sub(x[name]) for name, sub in subs))
        else:
            raise Unsupported(f"keyword {kw!r}")
    return lambda x: all(c(x) for c in checks)
