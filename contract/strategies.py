"""Hypothesis strategies for upload-cover bodies, generated from the request schema's branches.

Nothing here restates a limit: lengths, enums, required fields and the weight rule are read
from `schemas/upload-cover-request.json` (itself generated from `schemas/model-limits.json`)
through `contract.schemas`. Change the table, regenerate the schema, and these follow.

- `valid_bodies()`        bodies of every mode and model that the schema accepts, with text
                          fields reaching their length limits and weights drawn from every
                          legal value (0.00 .. 1.00 in hundredths);
- `invalid_bodies()`      `Labelled` bodies that break exactly one rule, with the rule, the field
                          and the expected envelope code (422);
- `boundary_cases()`,
  `rule_cases()`          the same ideas enumerated (no randomness): every limit at its value and
                          one past it, every required field missing, every enum and weight bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import strategies as st

from . import schemas as S

DEFAULT_UPLOAD_URL = "https://storage.example.com/upload"  # the page's own example
DEFAULT_CALLBACK_URL = "https://api.example.com/callback"
VALIDATION_CODE = 422  # "Validation Error - The request parameters failed validation checks"

# Printable, no control characters, BMP only: "characters" is unambiguous for these
# (astral characters count 1 in JSON Schema and 2 in UTF-16 services; not this kit's question).
ALPHABET = st.characters(min_codepoint=0x20, max_codepoint=0xFFFD,
                         blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp"))
FILLER = "la "


@dataclass(frozen=True)
class Labelled:
    """A request body and what the contract says the target must answer."""

    body: dict
    rule: str  # the JSON Schema keyword (maxLength, required, enum, ...)
    field: str | None
    expected: int  # envelope code: 200 accepted, 422 rejected
    scope: str = ""  # "custom/lyrics V3_5", "non-custom", ...
    note: str = ""  # a sentence: what the spec says about this body
    tags: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        where = f"[{self.scope}]" if self.scope else ""
        return f"{self.field or 'body'}.{self.rule}{where}"


def text_of(n: int, seed: str = FILLER) -> str:
    """Exactly n characters (a seed repeated), never starting or ending with a space."""
    if n <= 0:
        return ""
    seed = seed or FILLER
    out = (seed * (n // len(seed) + 1))[:n]
    if out[0] == " ":
        out = "x" + out[1:]
    if out[-1] == " ":
        out = out[:-1] + "x"
    return out


def base_body(branch: S.Branch, model: str, *, upload_url: str = DEFAULT_UPLOAD_URL,
              callback_url: str = DEFAULT_CALLBACK_URL, fill: str = "short") -> dict:
    """The smallest valid body of `branch` for `model` (fill="max": text fields at their limits)."""
    body = {"uploadUrl": upload_url, "customMode": branch.custom,
            "instrumental": True if branch.instrumental is None else branch.instrumental,
            "model": model, "callBackUrl": callback_url}
    if branch.instrumental is None:
        body["instrumental"] = False
    for name in S.TEXT_FIELDS:
        limit = branch.limit(name)
        if name not in branch.required and not (fill == "max" and limit):
            continue
        body[name] = text_of(limit if fill == "max" else min(limit, 12), FILLER)
    return body


# -- valid bodies ------------------------------------------------------------------------------------
def _length(lo: int, hi: int):
    """A length in [lo, hi], biased to the limits (where the bugs are)."""
    return st.one_of(st.just(hi), st.just(lo), st.integers(lo, hi))


@st.composite
def _text(draw, lo: int, hi: int) -> str:
    n = draw(_length(lo, hi))
    seed = draw(st.text(ALPHABET, min_size=1, max_size=16))
    return text_of(n, seed)


def weights():
    """Every legal weight (0.00 .. 1.00 in hundredths), boundaries first so shrinking finds them."""
    values = S.legal_weights()
    return st.sampled_from([values[0], values[-1], *values[1:-1]])


@st.composite
def valid_bodies(draw, branch: S.Branch | None = None, model: str | None = None, *,
                 upload_url: str | None = DEFAULT_UPLOAD_URL, callback_url: str | None = DEFAULT_CALLBACK_URL):
    """A body the schema accepts, of `branch`/`model` when given, else of any mode and model."""
    if branch is None:
        branch = draw(st.sampled_from([b for b in S.branches() if model is None or model in b.models]))
    model = model or draw(st.sampled_from(branch.models))
    body = base_body(branch, model, upload_url=upload_url or DEFAULT_UPLOAD_URL,
                     callback_url=callback_url or DEFAULT_CALLBACK_URL)
    if branch.instrumental is None:
        body["instrumental"] = draw(st.booleans())
    for name in S.TEXT_FIELDS:
        limit = branch.limit(name)
        required = name in branch.required
        if not required and (not limit or not draw(st.booleans())):
            if limit == 0 and draw(st.booleans()):  # "leave empty": absent, "" or null are all empty
                body[name] = draw(st.sampled_from(["", None]))
            continue
        body[name] = draw(_text(max(branch.min_length(name), 0 if not required else 1), limit))
    if draw(st.booleans()):
        body["negativeTags"] = draw(st.text(ALPHABET, max_size=40))
    if draw(st.booleans()):
        body["vocalGender"] = draw(st.sampled_from(branch.properties["vocalGender"]["enum"]))
    for w in S.WEIGHTS:
        if draw(st.integers(0, 3)):  # present 3 times in 4
            body[w] = draw(weights())
    assert S.request_valid(body), (body, S.request_errors(body))
    return body


# -- one rule broken ------------------------------------------------------------------------------------
def _mutations(body: dict, branch: S.Branch) -> list[tuple[str, str, object, str]]:
    """(rule, field, new value or ..., note) for every single-rule break of `body`; ... = drop the field."""
    model = body["model"]
    scope = f"{branch.scope} {model}"
    out: list[tuple[str, str, object, str]] = []
    for name in branch.required:
        out.append(("required", name, ..., f"{name} is required ({scope})"))
    for name in S.TEXT_FIELDS:
        limit = branch.limit(name)
        if limit is not None:
            what = "must be left empty" if limit == 0 else f"at most {limit} characters"
            out.append(("maxLength", name, text_of(limit + 1), f"{name}: {what} ({scope}); sent {limit + 1}"))
        if branch.min_length(name) and name in branch.required:
            out.append(("minLength", name, "", f"{name}: must not be empty ({scope})"))
        out.append(("type", name, 12345, f"{name}: must be a string"))
    out.append(("enum", "model", "V9_9", f"model: one of {', '.join(S.models())}"))
    out.append(("enum", "vocalGender", "x", "vocalGender: m or f"))
    r = S.weight_rule()
    step = Decimal(str(r["multipleOf"]))
    for w in S.WEIGHTS:
        out.append(("minimum", w, float(Decimal(str(r["minimum"])) - step), f"{w}: at least {r['minimum']}"))
        out.append(("maximum", w, float(Decimal(str(r["maximum"])) + step), f"{w}: at most {r['maximum']}"))
        out.append(("multipleOf", w, float(step / 2), f"{w}: a multiple of {r['multipleOf']} (2 decimals)"))
        out.append(("type", w, "0.5", f"{w}: must be a number"))
    for u in ("uploadUrl", "callBackUrl"):
        out.append(("pattern", u, "ftp://storage.example.com/a.mp3", f"{u}: an absolute http(s) URL"))
        out.append(("format", u, "http://[::1/cover.mp3", f"{u}: a URI (RFC 3986)"))
    for b in ("customMode", "instrumental"):
        # the body's own mode, as a string: a target that coerces "true"/"false" would accept it
        # (the other mode's string would fail anyway, on that mode's required fields)
        as_text = "true" if body[b] else "false"
        out.append(("type", b, as_text, f"{b}: a boolean, not the string {as_text!r}"))
    return out


def break_one(body: dict, rule: str, name: str, value) -> dict:
    out = dict(body)
    if value is ...:
        out.pop(name, None)
    else:
        out[name] = value
    return out


def _labelled_breaks(body: dict, branch: S.Branch) -> list[Labelled]:
    scope = f"{branch.scope} {body['model']}"
    found = []
    for rule, name, value, note in _mutations(body, branch):
        broken = break_one(body, rule, name, value)
        if not S.request_valid(broken):
            found.append(Labelled(broken, rule, name, VALIDATION_CODE, scope, note))
    return found


@st.composite
def invalid_bodies(draw, branch: S.Branch | None = None, model: str | None = None, *,
                   upload_url: str | None = DEFAULT_UPLOAD_URL, callback_url: str | None = DEFAULT_CALLBACK_URL):
    """A `Labelled` body that breaks exactly one rule of an otherwise valid body (expected: 422)."""
    body = draw(valid_bodies(branch, model, upload_url=upload_url, callback_url=callback_url))
    b = S.branch_for(body["customMode"], body["instrumental"], body["model"])
    return draw(st.sampled_from(_labelled_breaks(body, b)))


# -- the same, enumerated -------------------------------------------------------------------------------
def boundary_cases(**urls) -> list[Labelled]:
    """Per branch and model: every text field at its limit (accepted) and each one past (rejected)."""
    out = []
    for b in S.branches():
        for model in b.models:
            scope = f"{b.scope} {model}"
            at = base_body(b, model, fill="max", **urls)
            limited = [n for n in S.TEXT_FIELDS if b.limit(n)]
            note = ", ".join(f"{n} {b.limit(n)}" for n in limited)
            out.append(Labelled(at, "maxLength", "+".join(limited), 200, scope,
                                f"accepted with every text field at its limit ({note})", ("at-limit",)))
            for n in S.TEXT_FIELDS:
                limit = b.limit(n)
                if limit is None:
                    continue
                past = dict(at, **{n: text_of(limit + 1)})
                what = "must be left empty" if limit == 0 else f"at most {limit} characters"
                out.append(Labelled(past, "maxLength", n, VALIDATION_CODE, scope,
                                    f"{n}: {what} ({scope}); sent {limit + 1}", ("one-past",)))
    return out


def weight_cases(**urls) -> list[Labelled]:
    """Weights at the bounds and the float traps (accepted); one step past and 3 decimals (rejected)."""
    r = S.weight_rule()
    legal = S.legal_weights()
    # Values whose binary float is not an exact multiple of 0.01 (0.07, 0.29, 0.57, ...): a
    # validator dividing floats rejects them although the page allows them.
    traps = [v for v in legal if (v / r["multipleOf"]) != round(v / r["multipleOf"])]
    groups = [[legal[0], legal[-1], legal[len(legal) // 2]], [legal[1], legal[-2], *traps[:1]], traps[1:3]]
    b = S.branches()[0]
    model = b.models[0]
    out = []
    for values in (g for g in groups if g):
        body = base_body(b, model, **urls)
        for w, v in zip(S.WEIGHTS, values * 3):
            body[w] = v
        shown = ", ".join(f"{w}={body[w]}" for w in S.WEIGHTS)
        out.append(Labelled(body, "multipleOf", "weights", 200, "", f"legal weights accepted ({shown})", ("at-limit",)))
    base = base_body(b, model, **urls)
    step = Decimal(str(r["multipleOf"]))
    for w in S.WEIGHTS:
        for rule, v in (("minimum", float(Decimal(str(r["minimum"])) - step)),
                        ("maximum", float(Decimal(str(r["maximum"])) + step)),
                        ("multipleOf", float(Decimal(str(r["maximum"])) - step / 2))):
            out.append(Labelled(dict(base, **{w: v}), rule, w, VALIDATION_CODE, "",
                                f"{w}: from {r['minimum']} to {r['maximum']} in steps of {r['multipleOf']}; sent {v}",
                                ("one-past",)))
    return out


def rule_cases(**urls) -> list[Labelled]:
    """Every other single-rule break, once per branch (first model): required, minLength, enum, type, URLs."""
    out = []
    common = set(S.branches()[0].required)
    for i, b in enumerate(S.branches()):
        body = base_body(b, b.models[0], **urls)
        for case in _labelled_breaks(body, b):
            if case.rule in ("maxLength",) or case.field in S.WEIGHTS and case.rule != "type":
                continue  # boundary_cases() and weight_cases() enumerate those per model
            per_mode = case.field in S.TEXT_FIELDS or (case.rule == "required" and case.field not in common) or (
                case.rule == "type" and case.field in ("customMode", "instrumental"))  # its own mode's string
            if i and not per_mode:
                continue  # a rule that does not depend on the mode: checked once, on the first branch
            out.append(case)
    return out


def all_weight_values() -> list[float]:
    """Every legal weight, for tests that want all 101 of them."""
    return S.legal_weights()


def draw_examples(strategy, n: int, seed: int = 0) -> list:
    """Up to `n` examples of `strategy`, reproducibly for a seed (outside any test)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    found: list = []
    if n <= 0:
        return found

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        found.append(value)

    collect()
    return found[:n]
