"""Spec-driven: schemathesis over openapi.yaml, with every built-in check, plus the checks the
built-in ones cannot see because errors ride in the envelope.

Generation comes from schemathesis (its coverage phase, which walks each `oneOf` branch's
boundaries, and its fuzzing phase); sending goes through `ctx.target`, so the same cases hit
the in-process fake, a running fake or the real service, paced and recorded alike.

The built-in checks judge the HTTP status, which says nothing here (most errors are HTTP
200). So they are run on a *lifted* view of each response whose status is the envelope's
code (an HTTP-200 envelope with code 422 is judged as a 422). `ignored_auth` is left out:
it re-sends requests behind the runner's back (the auth suite covers it, envelope-aware).
On top: the envelope rules (documented code, transport, schema) and the verdict the contract
gives for the request actually sent (valid body and key -> 200; bad key -> 401; else 422).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from urllib.parse import urlsplit

from .. import schemas as S
from ..runner import Skip, check, resendable
from ..strategies import draw_examples
from ..target import Exchange

DROP_HEADERS = {"user-agent", "accept-encoding", "connection", "x-schemathesis-testcaseid", "content-length"}
URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
INCONCLUSIVE = {402, 429, 455}  # the account's or service's state, not the request's validity
# Coverage-phase scenarios that probe one boundary or rule (all are sent); the rest are sampled.
RULE_SCENARIOS = {"string_above_max_length", "string_below_min_length", "value_above_maximum",
                  "value_below_minimum", "not_multiple_of", "invalid_enum_value",
                  "object_missing_required_property", "invalid_format", "invalid_pattern", "missing_parameter",
                  "malformed_content_type", "unsupported_content_type", "unspecified_http_method",
                  "near_boundary_length_string", "default_positive_test", "example_value"}


def available() -> bool:
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def load_schema():
    import schemathesis

    return schemathesis.openapi.from_path(str(S.OPENAPI))


def operations():
    schema = load_schema()
    return [schema[path][method] for path, method in S.ENDPOINTS.items()]


def coverage_cases(op, modes):
    return list(_coverage_cases(op.label, tuple(m.value for m in modes)))


@lru_cache(maxsize=None)
def _coverage_cases(label: str, modes: tuple[str, ...]):
    """The coverage phase is deterministic: computed once per operation and mode."""
    from schemathesis import GenerationMode

    schema = load_schema()
    op = next(o for o in operations() if o.label == label)
    modes = [GenerationMode(m) for m in modes]
    return tuple(schema.iter_coverage_cases(op, generation_modes=modes,
                                           generation_config=schema.config.generation_for(operation=op)))


@lru_cache(maxsize=None)
def fuzz_cases(label: str, mode: str, n: int, seed: int):
    """`n` fuzzed cases of one operation (the same for the same seed: computed once)."""
    from schemathesis import GenerationMode

    op = next(o for o in operations() if o.label == label)
    return tuple(draw_examples(op.as_strategy(generation_mode=GenerationMode(mode)), n, seed))


def _scenario(case) -> str:
    try:
        return str(case.meta.phase.data.scenario or "")
    except AttributeError:
        return ""


def _at_limit_fields(body) -> list[str]:
    """Text fields of `body` at (or one past) their branch limit: 'title=80', 'prompt=401', ..."""
    if not isinstance(body, dict):
        return []
    try:
        b = S.branch_for(body.get("customMode"), body.get("instrumental"), body.get("model"))
    except (LookupError, TypeError):
        return []
    out = []
    for name in S.TEXT_FIELDS:
        limit, value = b.limit(name), body.get(name)
        if limit and isinstance(value, str) and len(value) in (limit, limit + 1):
            out.append(f"{name}={len(value)}")
    return out


def select(cases, n: int, seed: int):
    """Every case that probes a rule or a length limit, plus `n` of the others (seeded)."""
    keep, rest = [], []
    for c in cases:
        (keep if _scenario(c) in RULE_SCENARIOS or _at_limit_fields(c.body) else rest).append(c)
    rng = random.Random(seed)
    return keep + rng.sample(rest, min(n, len(rest)))


def measure_boundaries(n_fuzz: int = 200, seed: int = 0) -> dict:
    """How many boundary-length upload-cover bodies schemathesis generates for our encoding.

    Counts distinct (mode, model, field) limits reached exactly ('at') and one past ('past'),
    in the coverage phase and in `n_fuzz` fuzzed examples of each mode.
    """
    from schemathesis import GenerationMode

    op = load_schema()[S.UPLOAD_COVER]["POST"]
    limits = {(b.scope, m, f) for b in S.branches() for m in b.models for f in S.TEXT_FIELDS if b.limit(f)}
    branch_limits = {(b.scope, b.models, f) for b in S.branches() for f in S.TEXT_FIELDS if b.limit(f)}

    def tally(cases):
        at, past, branch_at, branch_past, hits = set(), set(), set(), set(), 0
        for c in cases:
            body = c.body if isinstance(c.body, dict) else None
            if not body:
                continue
            try:
                b = S.branch_for(body.get("customMode"), body.get("instrumental"), body.get("model"))
            except (LookupError, TypeError):
                continue
            hit = False
            for f in S.TEXT_FIELDS:
                limit, v = b.limit(f), body.get(f)
                if limit and isinstance(v, str) and len(v) in (limit, limit + 1):
                    key = (b.scope, body["model"], f)
                    (at if len(v) == limit else past).add(key)
                    (branch_at if len(v) == limit else branch_past).add((b.scope, b.models, f))
                    hit = True
            hits += hit
        return {"cases": len(cases), "boundary_bodies": hits, "at": len(at), "past": len(past),
                "branch_at": len(branch_at), "branch_past": len(branch_past)}

    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    cov = tally(coverage_cases(op, modes))
    fuzz = tally([c for m in modes for c in draw_examples(op.as_strategy(generation_mode=m), n_fuzz, seed)])
    return {"limits": len(limits), "branch_limits": len(branch_limits), "coverage": cov, "fuzzing": fuzz}


# -- sending one schemathesis case through the target --------------------------------------------------------
def _prepare(ctx, case):
    """(method, path, query, headers, json-or-..., raw data, negative-at-header) for the target."""
    from schemathesis.core.parameters import ParameterLocation

    kw = case.as_transport_kwargs(base_url="http://target.invalid")
    method = kw["method"].upper()
    path = urlsplit(kw["url"]).path
    headers = {k: v for k, v in (kw.get("headers") or {}).items() if k.lower() not in DROP_HEADERS}
    neg_header = bool(case.meta and case.meta.is_negative_at(ParameterLocation.HEADER))
    if "Authorization" in headers and not neg_header:
        headers["Authorization"] = ctx.target.auth_header()
    body = kw.get("json", ...)
    data = kw.get("data")
    if isinstance(body, dict):  # our URLs, never a generated host: no callback or fetch leaves for the internet
        body = dict(body)
        for key, value in ctx.urls().items():
            name = "uploadUrl" if key == "upload_url" else "callBackUrl"
            if isinstance(body.get(name), str) and URL.match(body[name]):
                body[name] = value
    return method, path, dict(kw.get("params") or {}), headers, body, data


def _expected(ctx, method, path, headers, body, data) -> tuple[set[int] | None, bool, str]:
    """(codes the contract allows, whether it may create a task, why) for the request as sent."""
    if S.ENDPOINTS.get(path) != method:
        return None, False, "undocumented method"
    auth_ok = headers.get("Authorization") == ctx.target.auth_header()
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if path == S.UPLOAD_COVER:
        valid = body is not ... and S.request_valid(body)
        json_ct = ctype.split(";")[0].strip() == "application/json"
        if not auth_ok:
            return ({401} if valid else {401, 422}), False, "401: a valid Bearer key is required"
        if valid and json_ct:
            return {200}, True, "200 with a taskId: the schema accepts this body"
        errs = S.request_errors(body) if body is not ... else ["no JSON body"]
        why = errs[0] if errs and not (valid and not json_ct) else f"Content-Type {ctype or 'missing'}"
        return {422}, valid, f"422: {why}"
    if not auth_ok:
        return {401}, False, "401: a valid Bearer key is required"
    if path == S.RECORD_INFO:
        return {422}, False, "422: taskId missing or unknown (recordInfo is null)"
    return {200}, False, "200 with the balance"


def _lifted(ctx, ex: Exchange):
    """A schemathesis Response whose status is the envelope's code (when the HTTP status is 200)."""
    import requests
    from schemathesis import Response

    reply = ex.reply
    status = reply.status
    if status == 200 and isinstance(reply.code, int) and 100 <= reply.code <= 599:
        status = reply.code
    if ex.path == S.RECORD_INFO and reply.code == 422 and status in (200, 422) and ex.query.get("taskId"):
        # The contract answers an unknown task with code 422 ("recordInfo is null"), where
        # schemathesis expects the status of a missing resource: show it as that.
        status = 404
    url = ctx.target.base_url.rstrip("/") + ex.path
    kwargs = {"json": ex.body} if isinstance(ex.body, (dict, list)) else {"data": ex.body}
    prepared = requests.Request(ex.method, url, headers=ex.headers, params=ex.query, **kwargs).prepare()
    return Response(status_code=status, headers={k: [v] for k, v in reply.headers.items()}, content=reply.content,
                    request=prepared, elapsed=reply.elapsed, verify=True)


def _builtin_failures(case, lifted, headers) -> list:
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import ignored_auth

    try:
        case.validate_response(lifted, excluded_checks=[ignored_auth], headers=headers)
    except FailureGroup as group:
        return list(group.exceptions)
    return []


def _created(ex: Exchange) -> bool:
    return ex.reply.code == 200 and isinstance(ex.reply.data, dict) and "taskId" in ex.reply.data


def run_case(ctx, case, spends_allowed: bool) -> None:
    method, path, query, headers, body, data = _prepare(ctx, case)
    expected, may_spend, why = _expected(ctx, method, path, headers, body, data)
    if may_spend:
        if not spends_allowed or not ctx.budget.affordable():
            ctx.shared["spec_skipped"] = ctx.shared.get("spec_skipped", 0) + 1
            return
        ctx.budget.reserve()
    elif method == "POST" and path == S.UPLOAD_COVER and not ctx.may_send_rejected():
        ctx.shared["spec_skipped"] = ctx.shared.get("spec_skipped", 0) + 1  # a lenient target: it may charge
        return
    ctx.case()
    if may_spend:
        ctx.shared.setdefault("spec_limits", []).extend(_at_limit_fields(body))
    call = {"json": body} if body is not ... else {"data": data}
    ex = ctx.target.call(method, path, params=query, headers=headers, auth=headers.get("Authorization"),
                         label=ctx.result.check, idempotent=method == "GET" or resendable(body), **call)
    code = ex.reply.code
    if may_spend and code != 200:
        ctx.budget.release()
    elif not may_spend and method == "POST" and path == S.UPLOAD_COVER and _created(ex):
        ctx.budget.charge_surprise()
    scenario = _scenario(case) or (case.meta.generation.mode.value if case.meta else "")
    for failure in _builtin_failures(case, _lifted(ctx, ex), headers):
        name = (type(failure).checks or (failure.title,))[0]
        first = (failure.message.strip().splitlines() or [""])[0][:120]  # (a ServerError's message is empty)
        ctx.disagree(f"schemathesis:{name}", ex, f"{failure.title}: {first}".rstrip(": ")
                     + (f" [{scenario}]" if scenario else ""), ex)
    if expected is None:
        return
    success = {S.UPLOAD_COVER: "upload-cover-response.json", S.RECORD_INFO: "record-info-response.json",
               S.CREDIT: "credit-response.json"}[path]
    ctx.envelope(ex, success)
    if code in expected or (expected == {200} and code in INCONCLUSIVE):
        return
    rule = "verdict.accept" if expected == {200} else "verdict.reject"
    ctx.disagree(rule, ex, why, ex)


def _spec_run(ctx, positive: bool) -> None:
    if not available():
        raise Skip("schemathesis is not installed (pip install 'kie-mock[contract]')")
    from schemathesis import GenerationMode

    mode = GenerationMode.POSITIVE if positive else GenerationMode.NEGATIVE
    for op in operations():
        cases = select(coverage_cases(op, [mode]), ctx.examples, ctx.seed)
        cases += fuzz_cases(op.label, mode.value, ctx.examples, ctx.seed)
        for case in cases:
            run_case(ctx, case, spends_allowed=positive)
    if positive:
        sent = [f for f in ctx.shared.pop("spec_limits", [])]
        ctx.note(f"boundary-length bodies sent: {len(sent)} ({', '.join(sorted(set(sent)))})")
    skipped = ctx.shared.pop("spec_skipped", 0)
    if skipped:
        ctx.note(f"{skipped} cases that would create tasks (or, on a target that accepts bodies the contract "
                 f"rejects, might) were not sent (budget)")
        if positive and not ctx.result.cases:
            raise Skip(f"all {skipped} positive cases would create tasks; budget exhausted")


@check("spec.negative", "spec", "free")
def negative(ctx):
    """schemathesis negative cases (coverage + fuzzing) on every operation: rejected as the contract says."""
    _spec_run(ctx, positive=False)


@check("spec.positive", "spec", "spends")
def positive(ctx):
    """schemathesis positive cases, boundary lengths included: accepted, in the documented shapes."""
    _spec_run(ctx, positive=True)
