"""Validators built from schemas/ (the fake validates with the same files the suites read).

Two traps of the JSON Schema library are closed here, once, for every schema:
- `multipleOf` on floats: jsonschema divides binary floats, so 0.29 is "not a multiple
  of 0.01". We compare decimals of the number's shortest repr instead (0.29 is, 0.295
  is not, 1e-2 is).
- `format` is an annotation unless a checker is given, and "uri" is only checked when
  an RFC 3986 library is installed (rfc3986-validator is a dependency). Booleans are
  not numbers in jsonschema (True is rejected by "type": "number"): tests pin that.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation, localcontext
from functools import lru_cache

import jsonschema
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .paths import SCHEMAS

BASE = "https://kie-mock.local/schemas/"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _decimal(x) -> Decimal | None:
    try:
        return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)
    except (InvalidOperation, ValueError, TypeError):
        return None


def is_multiple(instance, divisor) -> bool:
    """multipleOf on the decimal value of the number's shortest repr (0.29 is a multiple of 0.01)."""
    n, d = _decimal(instance), _decimal(divisor)
    if n is None or d is None or not n.is_finite():
        return False
    # The integer quotient of a huge number (1e30, 10**30) needs more digits than the default
    # 28: give the division enough precision instead of raising DivisionImpossible (a 500).
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, n.adjusted() - d.adjusted() + 2)
        return n % d == 0


def _multiple_of(validator, divisor, instance, schema):
    if validator.is_type(instance, "number") and not is_multiple(instance, divisor):
        yield ValidationError(f"{instance!r} is not a multiple of {divisor}")


Validator = extend(Draft202012Validator, {"multipleOf": _multiple_of})
FORMATS = Draft202012Validator.FORMAT_CHECKER


@lru_cache(maxsize=1)
def _files() -> dict:
    """The schema files (those that declare "$schema"), by name, as written."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        contents = json.loads(path.read_text())
        if "$schema" in contents:
            out[path.name] = contents
    return out


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The files as resources for $ref, without their "$schema": jsonschema picks the validator
    class anew from "$schema" wherever a $ref enters a resource that declares one (the stock
    2020-12 class, whose float multipleOf is the trap above). Every file is 2020-12."""
    for name, contents in _files().items():
        if contents["$schema"].rstrip("#") != DIALECT:
            raise ValueError(f"schemas/{name}: only JSON Schema 2020-12 is supported, not {contents['$schema']}")
    return Registry().with_resources(
        (BASE + name, Resource(contents={k: v for k, v in contents.items() if k != "$schema"},
                               specification=DRAFT202012))
        for name, contents in _files().items())


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """schemas/<name> as written (KeyError: no such file)."""
    return _files()[name]


@lru_cache(maxsize=None)
def validator(name: str) -> Validator:
    """A validator for schemas/<name>, with refs to sibling files resolved."""
    return Validator(schema(name), registry=registry(), format_checker=FORMATS)


def validator_for(subschema: dict) -> Validator:
    return Validator(subschema, registry=registry(), format_checker=FORMATS)


def check_uri_format_available() -> None:
    """Fail loudly if 'uri' would silently pass everything (no RFC 3986 checker installed)."""
    if FORMATS.conforms("not a uri", "uri"):
        raise RuntimeError("format 'uri' is not enforced: install rfc3986-validator")


__all__ = ["Validator", "validator", "validator_for", "schema", "registry", "jsonschema"]
