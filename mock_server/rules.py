"""The upload-cover rules: request body -> None (accepted) or a Rejection with a reason.

Accept/reject is decided by schemas/upload-cover-request.json alone (one source of
truth); its number keywords are also applied to the weights as written in the request's
text (`weights_as_written`: a parser rounds 1.0000000000000001 to 1.0). When it rejects,
`diagnose` finds the branch of the `oneOf` that the request
meant (its customMode / instrumental / model) and turns that branch's first error into
a sentence a person can act on: which field, which rule, the limit for that model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from jsonschema import ValidationError

from .fastschema import Unsupported, compile_schema
from .limits import table
from .spec import is_multiple, schema, validator, validator_for

REQUEST_SCHEMA = "upload-cover-request.json"
DISCRIMINATORS = ("customMode", "instrumental", "model")
# The order fields are reported in, when several are wrong (the page's order).
FIELD_ORDER = ("uploadUrl", "callBackUrl", "customMode", "instrumental", "model", "prompt",
               "style", "title", "negativeTags", "vocalGender", "styleWeight",
               "weirdnessConstraint", "audioWeight")


@dataclass(frozen=True)
class Rejection:
    code: int
    msg: str
    field: str | None = None
    rule: str | None = None  # the JSON Schema keyword (or transport rule) that failed
    details: tuple[str, ...] = ()
    retry_after: int | None = None  # seconds, for 429 (sent as Retry-After)
    transport: str | None = None  # how it is answered, when not the server's (a forced code's own)


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _shown(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_WORDS = {"string": "a string", "number": "a number", "integer": "an integer",
               "boolean": "a boolean (true or false)", "null": "null",
               "object": "an object", "array": "an array"}


def _types(expected) -> str:
    names = [expected] if isinstance(expected, str) else list(expected)
    words = [_TYPE_WORDS[n] for n in names if n != "null"]
    text = " or ".join(words) or "null"
    return text + (" (or null / omitted)" if "null" in names and words else "")


@lru_cache(maxsize=1)
def _branches() -> list[dict]:
    return schema(REQUEST_SCHEMA)["oneOf"]


@lru_cache(maxsize=1)
def _required_everywhere() -> list[str]:
    sets = [set(b["required"]) for b in _branches()]
    return [f for f in FIELD_ORDER if all(f in s for s in sets)]


def _branch_index(body: dict) -> int | None:
    """The index of the branch the body's discriminators pick, or None."""
    for i, branch in enumerate(_branches()):
        props = branch["properties"]
        if (body.get("customMode") is props["customMode"]["const"]
                and ("const" not in props["instrumental"]
                     or body.get("instrumental") is props["instrumental"]["const"])
                and body.get("model") in props["model"]["enum"]):
            return i
    return None


def _branch_for(body: dict) -> dict | None:
    i = _branch_index(body)
    return None if i is None else _branches()[i]


def _disjoint(a: dict, b: dict) -> bool:
    """True when no body can match both branches, judged from their discriminators alone."""
    pa, pb = a["properties"], b["properties"]
    for name in ("customMode", "instrumental"):
        if "const" in pa[name] and "const" in pb[name] and pa[name]["const"] is not pb[name]["const"]:
            return True
    return not set(pa["model"]["enum"]) & set(pb["model"]["enum"])


@lru_cache(maxsize=1)
def _exclusive() -> bool:
    """The branches of the oneOf exclude each other (checked once, on the schema itself)."""
    bs = _branches()
    return all(_disjoint(a, b) for i, a in enumerate(bs) for b in bs[i + 1:])


@lru_cache(maxsize=None)
def _branch_check(index: int):
    """The branch compiled to a predicate (fastschema), or jsonschema's is_valid if it can't be."""
    branch = _branches()[index]
    try:
        return compile_schema(branch)
    except Unsupported:
        return validator_for(branch).is_valid


def schema_accepts(body: dict) -> bool:
    """The schema's verdict on an object body.

    When the branches provably exclude each other, `oneOf` holds exactly when the one
    branch the discriminators pick holds, so only that branch is evaluated (about five
    times less work than evaluating all of them; tests compare both on generated bodies).
    """
    if _exclusive():
        i = _branch_index(body)
        return i is not None and _branch_check(i)(body)
    return validator(REQUEST_SCHEMA).is_valid(body)


def _order(field_name: str | None) -> int:
    return FIELD_ORDER.index(field_name) if field_name in FIELD_ORDER else len(FIELD_ORDER)


def _explain(err: ValidationError, branch: dict, body: dict) -> tuple[int, str, str, str]:
    """(sort key, field, keyword, sentence) for one schema error in `branch`."""
    kw = err.validator
    condition = branch.get("x-condition", "")
    scope = branch.get("x-limit-scope", "").format(model=body.get("model"))
    if kw == "required":
        missing = [f for f in err.validator_value if f not in err.instance]
        name = sorted(missing, key=_order)[0]
        why = "" if name in _required_everywhere() else f" (required when {condition})"
        return (0, name, kw, f"Please enter {name}{why}")
    name = err.path[0] if err.path else None
    value = err.instance
    if kw == "type":
        return (1, name, kw, f"{name}: must be {_types(err.validator_value)}, got {_got(value)}")
    if kw == "maxLength" and err.validator_value == 0:
        return (2, name, kw, f"{name}: leave empty {scope} ({condition}); got {len(value)} characters")
    if kw == "maxLength":
        return (2, name, kw, f"{name}: at most {err.validator_value} characters {scope} (got {len(value)})")
    if kw == "minLength":
        why = "" if name in _required_everywhere() else f" (required when {condition})"
        return (2, name, kw, f"{name}: must not be empty{why}")
    if kw in ("minimum", "maximum"):
        return (2, name, kw, _range_sentence(name, branch["properties"][name], _shown(value)))
    if kw == "multipleOf":
        return (2, name, kw, _step_sentence(name, branch["properties"][name], _shown(value)))
    if kw in ("format", "pattern"):
        return (2, name, kw, f"{name}: must be an absolute http(s) URL (got {_shown(value)})")
    if kw == "enum":
        allowed = ", ".join("null" if v is None else "\"\"" if v == "" else str(v) for v in err.validator_value)
        return (2, name, kw, f"{name}: must be one of {allowed} (got {_shown(value)})")
    return (3, name, kw, f"{name or 'body'}: {err.message}")


def _range_sentence(name: str, rule: dict, shown) -> str:
    return f"{name}: must be between {rule['minimum']} and {rule['maximum']} (got {shown})"


def _step_sentence(name: str, rule: dict, shown) -> str:
    return f"{name}: at most 2 decimal places, a multiple of {rule['multipleOf']} (got {shown})"


def _got(value) -> str:
    """A wrong-typed value as a message shows it: its JSON type and value ("null" once)."""
    return "null" if value is None else f"{json_type(value)} {_shown(value)}"


def _discriminator_errors(body: dict) -> list[tuple[int, str, str, str]]:
    out = []
    models = table().model_names
    for name in DISCRIMINATORS:
        if name not in body:
            out.append((0, name, "required", f"Please enter {name}"))
        elif name == "model" and body[name] not in models:
            out.append((2, name, "enum", f"model: must be one of {', '.join(models)} (got {_shown(body[name])})"))
        elif name != "model" and not isinstance(body[name], bool):
            out.append((1, name, "type", f"{name}: must be {_types('boolean')}, got {_got(body[name])}"))
    for name in _required_everywhere():
        if name not in body and name not in DISCRIMINATORS:
            out.append((0, name, "required", f"Please enter {name}"))
    return out


def diagnose(body: dict) -> list[tuple[int, str, str, str]]:
    """Every reason `body` breaks the schema, most important first."""
    errors = _discriminator_errors(body)
    branch = _branch_for(body)
    if not errors and branch is not None:
        errors = [_explain(e, branch, body) for e in validator_for(branch).iter_errors(body)]
        # one sentence per field: a URL that breaks `format` and `pattern` is one thing to fix
        seen: set = set()
        errors = [e for e in errors if (e[1], e[3]) not in seen and not seen.add((e[1], e[3]))]
    return sorted(errors, key=lambda e: (e[0], _order(e[1])))


WEIGHTS = ("styleWeight", "weirdnessConstraint", "audioWeight")


def weights_as_written(body: dict, text: bytes) -> Rejection | None:
    """The schema's number keywords on the weights as the client wrote them (a body the schema
    accepted). A JSON parser reads 1.0000000000000001 as 1.0 and 1e-400 as 0.0, which then pass;
    the page's rule ("0-1, up to 2 decimals") is about what was sent. Only a body with a weight
    written in a way a double may not hold (see `_maybe_inexact`) is read again, exactly."""
    if not any(type(body.get(w)) in (float, int) for w in WEIGHTS) or not _maybe_inexact(text):
        return None
    try:
        exact = json.loads(text, parse_float=_exact_number)
    except (ValueError, RecursionError):  # the fake's own parser read it: nothing more to say
        return None
    branch = _branch_for(body)
    if not isinstance(exact, dict) or branch is None:
        return None
    for name in WEIGHTS:
        value, rule = exact.get(name), branch["properties"][name]
        if not isinstance(value, Decimal):
            continue
        if not rule["minimum"] <= value <= rule["maximum"]:
            return Rejection(422, _range_sentence(name, rule, value), name,
                             "maximum" if value > rule["maximum"] else "minimum")
        if not _exact_multiple(value, Decimal(str(rule["multipleOf"]))):
            return Rejection(422, _step_sentence(name, rule, value), name, "multipleOf")
    return None


_WEIGHT_KEYS = tuple(b'"%s"' % w.encode() for w in WEIGHTS)
_LITERAL = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(-?[0-9][0-9.eE+-]*)")
_INEXACT = re.compile(rb"(?:[0-9]\.?){16}|[eE][-+]?[0-9]{3}")
_KEYS_LOOKED_AT = 16  # occurrences of a weight's key; beyond, the body is read again anyway


def _maybe_inexact(text: bytes) -> bool:
    """Whether a weight's literal may not be what a double holds: 16 digits or more, or an
    exponent of 3 digits (a decimal of 15 digits comes back from a double unchanged). The
    literals are found after the weights' keys (a quick search, not a scan of every number in
    a body of up to 1 MiB); a key in a string or nested object only costs the exact reading."""
    looked = 0
    for key in _WEIGHT_KEYS:
        at = text.find(key)
        while at != -1:
            looked += 1
            if looked > _KEYS_LOOKED_AT:
                return True
            literal = _LITERAL.match(text, at + len(key))
            if literal is not None and _INEXACT.search(literal.group(1)):
                return True
            at = text.find(key, at + 1)
    return False


class _Far(Decimal):
    """A number literal beyond what a Decimal holds (an exponent past 10**18), stood in for by a
    value on the same side of every bound here (0, beyond 1, between 0 and 0.01), shown as sent."""

    literal: str

    def __new__(cls, stand_in: str, literal: str):
        self = super().__new__(cls, stand_in)
        self.literal = literal
        return self

    def __str__(self) -> str:
        return self.literal

    def __format__(self, spec: str) -> str:
        return self.literal if not spec else super().__format__(spec)


def _exact_number(literal: str) -> Decimal:
    try:
        return Decimal(literal)  # exact: building a Decimal from text is not rounded
    except InvalidOperation:
        mantissa, _, exponent = literal.lower().partition("e")
        if Decimal(mantissa) == 0:
            return Decimal(0)
        sign = "-" if mantissa.startswith("-") else ""
        return _Far(f"{sign}1E{'-' if exponent.startswith('-') else '+'}999999", literal)


def _exact_multiple(value: Decimal, divisor: Decimal) -> bool:
    """multipleOf without arithmetic where the divisor is a power of ten (0.01): the digits below
    it are all zero (no context rounds, or underflows 1e-999999999 to 0)."""
    sign, digits, exponent = divisor.as_tuple()
    if digits != (1,):
        return is_multiple(value, divisor)
    _, digits, exp = value.as_tuple()
    below = exponent - exp  # how many of value's last digits lie below the divisor's place
    return below <= 0 or not any(digits[-below:])


def check_upload_cover(body, text: bytes | None = None) -> Rejection | None:
    """None when the schema accepts `body`; otherwise the first reason, as a 422. `text`: the body
    as sent, for the weights as written."""
    if not isinstance(body, dict):
        return Rejection(422, f"request body must be a JSON object, got {json_type(body)}", None, "type")
    if schema_accepts(body):
        return None if text is None else weights_as_written(body, text)
    errors = diagnose(body)
    if not errors:  # the schema said no but no branch explains it: say what the schema said
        from jsonschema.exceptions import best_match
        err = best_match(validator(REQUEST_SCHEMA).iter_errors(body))
        return Rejection(422, f"request body: {err.message}", None, err.validator)
    _, name, kw, msg = errors[0]
    # "more problems" counts the other fields: one value that breaks two keywords (a URL's
    # format and pattern, a number's range and decimals) is one thing for the client to fix
    more = len({e[1] for e in errors} - {name})
    return Rejection(422, msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""),
                     name, kw, tuple(e[3] for e in errors))
