"""The request rules on the target: every limit accepted at its value (spends) and rejected
one past it (free); every required field, enum, type and URL rule broken once (free); and
hypothesis examples of valid and single-rule-broken bodies, generated from the schema."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from .. import schemas as S
from .. import strategies as T
from ..runner import Skip, check


@lru_cache(maxsize=None)
def _drawn(kind: str, n: int, seed: int) -> tuple:
    """Hypothesis examples, drawn once per (kind, n, seed) with the page's example URLs."""
    strategy = T.valid_bodies() if kind == "valid" else T.invalid_bodies()
    return tuple(T.draw_examples(strategy, n, seed))


def _with_urls(ctx, body: dict) -> dict:
    """The run's uploadUrl and callBackUrl in place of the defaults (a broken URL stays broken)."""
    urls = ctx.urls()
    out = dict(body)
    for name, default, new in (("uploadUrl", T.DEFAULT_UPLOAD_URL, urls["upload_url"]),
                               ("callBackUrl", T.DEFAULT_CALLBACK_URL, urls["callback_url"])):
        if out.get(name) == default:
            out[name] = new
    return out


def _reject(ctx, case, label=None):
    ctx.case()
    ex = ctx.send_rejected(case.body, label=label or ctx.result.check)
    ctx.expect_code(ex, case.expected, case.name, f"{case.expected}: {case.note}")


def _accept(ctx, case):
    ctx.case()
    ex = ctx.submit(case.body, label=ctx.result.check)
    ctx.expect_code(ex, 200, case.name, f"200 with a taskId: {case.note}", "upload-cover-response.json")
    return ex


@check("rules.one-past-limit", "rules", "free")
def one_past_limit(ctx):
    """Each text field one character past its limit, per mode and model: 422."""
    for case in T.boundary_cases(**ctx.urls()):
        if case.expected != 200:
            _reject(ctx, case)


@check("rules.weights-out-of-range", "rules", "free")
def weights_out_of_range(ctx):
    """Weights one step below 0, above 1, and with 3 decimals: 422."""
    for case in T.weight_cases(**ctx.urls()):
        if case.expected != 200:
            _reject(ctx, case)


@check("rules.single-rule-breaks", "rules", "free")
def single_rule_breaks(ctx):
    """Every required field missing, every enum, type and URL rule broken once: 422."""
    for case in T.rule_cases(**ctx.urls()):
        _reject(ctx, case)


@check("rules.invalid-examples", "rules", "free")
def invalid_examples(ctx):
    """Hypothesis: valid bodies of any mode/model with exactly one rule broken: 422."""
    for case in _drawn("invalid", ctx.examples, ctx.seed):
        _reject(ctx, replace(case, body=_with_urls(ctx, case.body)))


@check("rules.at-limit", "rules", "spends")
def at_limit(ctx):
    """Every text field at its limit, per mode and model: accepted."""
    cases = [c for c in T.boundary_cases(**ctx.urls()) if c.expected == 200]
    for i, case in enumerate(cases):
        if _budget_out(ctx, i, len(cases), "at-limit bodies"):
            return
        _accept(ctx, case)


@check("rules.legal-weights", "rules", "spends")
def legal_weights(ctx):
    """Weights at 0 and 1, one step inside, and float traps (0.07, 0.29...): accepted; every
    legal weight when the budget is unlimited (a fake)."""
    cases = [c for c in T.weight_cases(**ctx.urls()) if c.expected == 200]
    if ctx.budget.limit is None:  # a fake: all 101 values, three per body
        values = S.legal_weights()
        base = T.base_body(S.branches()[0], S.models()[0], **ctx.urls())
        cases = []
        for i in range(0, len(values), len(S.WEIGHTS)):
            chunk = (values[i:i + len(S.WEIGHTS)] * 3)[:len(S.WEIGHTS)]
            body = dict(base, **dict(zip(S.WEIGHTS, chunk)))
            cases.append(T.Labelled(body, "multipleOf", "weights", 200, "", f"legal weights {chunk} accepted"))
    for i, case in enumerate(cases):
        if _budget_out(ctx, i, len(cases), "weight bodies"):
            return
        _accept(ctx, case)


def _budget_out(ctx, done: int, total: int, what: str) -> bool:
    """Whether the budget stops the check before its next body: skipped when none was sent; else
    it stands on those sent (passed or failed as they were), with a note of how far it got."""
    if ctx.budget.affordable():
        return False
    if not done:
        raise Skip(f"budget exhausted before the first of {total} {what}")
    ctx.note(f"checked {done} of {total} {what}: the budget (--allow-spend) ran out")
    return True


@check("rules.valid-examples", "rules", "spends")
def valid_examples(ctx):
    """Hypothesis: valid bodies of every mode and model (lengths at the limits, any legal weight): accepted."""
    bodies = [_with_urls(ctx, b) for b in _drawn("valid", ctx.examples, ctx.seed)]
    for i, body in enumerate(bodies):
        if _budget_out(ctx, i, len(bodies), "examples"):
            return
        b = S.branch_for(body["customMode"], body["instrumental"], body["model"])
        _accept(ctx, T.Labelled(body, "valid", None, 200, f"{b.scope} {body['model']}",
                                "the schema accepts this body"))


@check("record-info.unknown-task", "rules", "free")
def unknown_task(ctx):
    """record-info for a taskId that does not exist: 422 'recordInfo is null' (API notes)."""
    ex = ctx.target.call("GET", S.RECORD_INFO, params={"taskId": "0" * 32}, label=ctx.result.check)
    ctx.case()
    ctx.expect_code(ex, 422, "record-info.unknown", "422 (recordInfo is null) for an unknown taskId")


@check("record-info.missing-task-id", "rules", "free")
def missing_task_id(ctx):
    """record-info without its required taskId parameter: 422."""
    ex = ctx.target.call("GET", S.RECORD_INFO, label=ctx.result.check)
    ctx.case()
    ctx.expect_code(ex, 422, "record-info.taskId.required", "422: taskId is a required query parameter")


@check("credit.balance", "rules", "free")
def credit_balance(ctx):
    """chat/credit: code 200 and the balance as a whole number."""
    ex = ctx.target.call("GET", S.CREDIT, label=ctx.result.check)
    ctx.case()
    ctx.expect_code(ex, 200, "credit.balance", "200 with data = remaining credits (an integer >= 0)",
                    "credit-response.json")
