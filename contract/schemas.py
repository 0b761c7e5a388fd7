"""The contract as data: openapi.yaml, schemas/*.json and the limit table, read once.

The validators here are the suite's own (jsonschema plus a decimal `multipleOf`), not the
fake's: an oracle that reused mock_server's validation would share its bugs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend
from referencing import Registry, Resource

ROOT = Path(os.environ.get("KIE_MOCK_SPEC_DIR") or Path(__file__).resolve().parent.parent)
OPENAPI = ROOT / "openapi.yaml"
SCHEMAS = ROOT / "schemas"
BASE = "https://kie-mock.local/schemas/"

UPLOAD_COVER = "/api/v1/generate/upload-cover"
RECORD_INFO = "/api/v1/generate/record-info"
CREDIT = "/api/v1/chat/credit"
ENDPOINTS = {UPLOAD_COVER: "POST", RECORD_INFO: "GET", CREDIT: "GET"}

# The page's Optional parameters say "Range 0-1, up to 2 decimals": the weights.
WEIGHTS = ("styleWeight", "weirdnessConstraint", "audioWeight")
TEXT_FIELDS = ("prompt", "style", "title")


def _decimal(x) -> Decimal | None:
    try:
        return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)
    except (InvalidOperation, ValueError, TypeError):
        return None


def _multiple_of(validator, divisor, instance, schema):
    # Binary floats make 0.29 "not a multiple of 0.01" for plain jsonschema; the page means decimals.
    if not validator.is_type(instance, "number"):
        return
    n, d = _decimal(instance), _decimal(divisor)
    if n is None or d is None or not n.is_finite() or n % d != 0:
        yield ValidationError(f"{instance!r} is not a multiple of {divisor}")


Validator = extend(Draft202012Validator, {"multipleOf": _multiple_of})


@lru_cache(maxsize=1)
def registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        contents = json.loads(path.read_text())
        if "$schema" in contents:
            resources.append((BASE + path.name, Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    return registry().contents(BASE + name)


@lru_cache(maxsize=None)
def validator(name: str):
    return Validator(schema(name), registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, instance) -> list[str]:
    """Every reason `instance` breaks schemas/<name>, as 'path: message' (empty when valid)."""
    out = []
    for err in sorted(validator(name).iter_errors(instance), key=lambda e: list(map(str, e.path))):
        where = "/".join(map(str, err.absolute_path)) or "(root)"
        out.append(f"{where}: {err.message[:160]}")
    return out


@lru_cache(maxsize=1)
def openapi() -> dict:
    return yaml.safe_load(OPENAPI.read_text())


@lru_cache(maxsize=1)
def documented_codes() -> tuple[int, ...]:
    """Envelope codes the contract names: 200 and the error envelope's enum."""
    return (200, *schema("error-envelope.json")["properties"]["code"]["enum"])


# -- the request schema's branches (generated from the limit table) -------------------------------
@dataclass(frozen=True)
class Branch:
    """One `oneOf` branch of the request schema: a mode, its models, and its per-field rules."""

    title: str
    custom: bool
    instrumental: bool | None  # None: either
    models: tuple[str, ...]
    required: tuple[str, ...]
    properties: dict

    def limit(self, name: str) -> int | None:
        return self.properties.get(name, {}).get("maxLength")

    def min_length(self, name: str) -> int:
        return self.properties.get(name, {}).get("minLength", 0)

    @property
    def scope(self) -> str:
        if not self.custom:
            return "non-custom"
        return f"custom/{'instrumental' if self.instrumental else 'lyrics'}"

    def accepts_null(self, name: str) -> bool:
        t = self.properties.get(name, {}).get("type")
        return isinstance(t, list) and "null" in t


@lru_cache(maxsize=1)
def branches() -> tuple[Branch, ...]:
    out = []
    for b in schema("upload-cover-request.json")["oneOf"]:
        props = b["properties"]
        out.append(Branch(
            title=b.get("title", ""),
            custom=props["customMode"]["const"],
            instrumental=props["instrumental"].get("const"),
            models=tuple(props["model"]["enum"]),
            required=tuple(b["required"]),
            properties=props,
        ))
    return tuple(out)


def branch_for(custom: bool, instrumental: bool, model: str) -> Branch:
    for b in branches():
        if b.custom is custom and (b.instrumental is None or b.instrumental is instrumental) and model in b.models:
            return b
    raise LookupError(f"no branch for customMode={custom} instrumental={instrumental} model={model}")


@lru_cache(maxsize=1)
def models() -> tuple[str, ...]:
    return tuple(dict.fromkeys(m for b in branches() for m in b.models))


@lru_cache(maxsize=1)
def weight_rule() -> dict:
    """minimum / maximum / multipleOf of the weights, as the schema states them."""
    p = branches()[0].properties[WEIGHTS[0]]
    return {"minimum": p["minimum"], "maximum": p["maximum"], "multipleOf": p["multipleOf"]}


def legal_weights() -> list[float]:
    """Every legal weight: minimum..maximum in steps of multipleOf (0.00, 0.01, ... 1.00)."""
    r = weight_rule()
    lo, hi, step = (Decimal(str(r[k])) for k in ("minimum", "maximum", "multipleOf"))
    n = int((hi - lo) / step)
    return [float(lo + step * i) for i in range(n + 1)]


def request_valid(body) -> bool:
    return isinstance(body, dict) and validator("upload-cover-request.json").is_valid(body)


def request_errors(body) -> list[str]:
    """Why the schema rejects `body`: the errors of the branch it means (its customMode /
    instrumental / model), or the oneOf's own when it means none. Empty when valid."""
    if not isinstance(body, dict):
        return [f"(root): the body must be a JSON object, got {type(body).__name__}"]
    try:
        v = _branch_validator(branches().index(branch_for(body.get("customMode"), body.get("instrumental"),
                                                          body.get("model"))))
    except (LookupError, TypeError, ValueError):
        return errors("upload-cover-request.json", body)
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:160]}" for e in v.iter_errors(body)]
    return found


@lru_cache(maxsize=None)
def _branch_validator(index: int):
    b = branches()[index]
    return Validator({"type": "object", "required": list(b.required), "properties": b.properties},
                     registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)
