"""The contract as data: openapi.yaml, schemas/*.json and the limit table, read once.

Validation comes from the spec layer (mock_server.spec), which the kit may import: it reads
the same files, and an independent JSON Schema implementation checks it in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import yaml

from mock_server import paths, spec

OPENAPI = paths.OPENAPI

UPLOAD_COVER = "/api/v1/generate/upload-cover"
RECORD_INFO = "/api/v1/generate/record-info"
CREDIT = "/api/v1/chat/credit"
ENDPOINTS = {UPLOAD_COVER: "POST", RECORD_INFO: "GET", CREDIT: "GET"}

# The page's Optional parameters say "Range 0-1, up to 2 decimals": the weights.
WEIGHTS = ("styleWeight", "weirdnessConstraint", "audioWeight")
TEXT_FIELDS = ("prompt", "style", "title")


# The spec layer's validators (jsonschema with a decimal multipleOf and format "uri"
# enforced), the ones the fake validates with: tests/test_independent_validator.py holds
# them to a second JSON Schema implementation, so the oracle does not rest on them alone.
Validator, FORMATS, registry, schema, validator = spec.Validator, spec.FORMATS, spec.registry, spec.schema, spec.validator


def errors(name: str, instance) -> list[str]:
    """Every reason `instance` breaks schemas/<name>, as 'path: message' (empty when valid). A
    oneOf/anyOf (a callback's stages, say) is explained by the branch that came closest, down
    to the field: "data/data/0: 'duration' is a required property", not "(root): {...} is not
    valid under any of the given schemas"."""
    out = []
    for top in sorted(validator(name).iter_errors(instance), key=lambda e: list(map(str, e.path))):
        for err in _closest(top):
            where = "/".join(map(str, err.absolute_path)) or "(root)"
            line = f"{where}: {err.message[:160]}"
            if line not in out:
                out.append(line)
    return out


def _closest(err) -> list:
    """The leaf errors of `err`: for a oneOf/anyOf, those of the branch whose type matched (an
    array of tracks over the `null` branch), then with the fewest errors (on a tie, the one whose
    errors lie deepest), recursively."""
    if not err.context:
        return [err]
    branches: dict = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def wrong_type(errs) -> bool:  # the value is not even of this branch's type
        return any(e.validator == "type" and e.absolute_path == err.absolute_path for e in errs)
    best = min(branches.values(),
               key=lambda errs: (wrong_type(errs), len(errs), -max(len(e.absolute_path) for e in errs)))
    return [leaf for sub in best for leaf in _closest(sub)]


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
                     registry=registry(), format_checker=FORMATS)
