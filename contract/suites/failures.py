"""Control tier: what the fake can be made to do, checked against the contract.

Each check needs the control API (/_mock) and is SKIPPED on a target without it. Settings
changed for a check are put back; faults are armed for this run's key only.
"""

from __future__ import annotations

import uuid

from .. import schemas as S
from .. import strategies as T
from ..runner import Skip, check
from .lifecycle import check_payloads, submit_and_wait


def _valid(ctx) -> dict:
    return T.base_body(S.branches()[0], S.models()[0], **ctx.urls())


@check("failures.forced-codes", "failures", "control")
def forced_codes(ctx):
    """Every documented error code, armed for the next request: that code, in the envelope, on the right transport."""
    ctl = ctx.need_control()
    for code in S.documented_codes():
        if code == 200:
            continue
        ctl.arm_code(code, key=ctx.target.api_key)
        ex = ctx.target.call("POST", S.UPLOAD_COVER, json=_valid(ctx), label=ctx.result.check, retry_429=False)
        ctx.case()
        if ex.reply.code == 200:
            ctx.budget.charge_surprise()
        ctx.expect_code(ex, code, f"error.{code}", f"{code} in the error envelope (forced through /_mock/faults)")
        if code == 429 and ex.reply.header("retry-after") is not None:
            ra = ex.reply.header("retry-after")
            if not (ra.isdigit() and int(ra) >= 1):
                ctx.disagree("error.429.retry-after", ex, "Retry-After: whole seconds >= 1", f"Retry-After: {ra}")
    ctl.clear_faults()


@check("failures.prefer-header", "failures", "control")
def prefer_header(ctx):
    """`Prefer: code=402` (Prism's style) answers 402 in the envelope."""
    ctx.need_control()
    ex = ctx.target.call("POST", S.UPLOAD_COVER, json=_valid(ctx), headers={"Prefer": "code=402"},
                         label=ctx.result.check)
    ctx.case()
    ctx.expect_code(ex, 402, "error.402", "402 (Insufficient Credits) in the error envelope")


@check("failures.insufficient-credits", "failures", "control")
def insufficient_credits(ctx):
    """A balance of 0: a valid cover answers 402 and charges nothing."""
    ctl = ctx.need_control()
    key = ctx.target.api_key
    before = ctx.target.call("GET", S.CREDIT, label=ctx.result.check).reply.data
    if not isinstance(before, int):
        raise Skip("chat/credit did not give a balance")
    ctl.put_account(key, credits=0)
    try:
        ex = ctx.target.call("POST", S.UPLOAD_COVER, json=_valid(ctx), label=ctx.result.check)
        ctx.case()
        ctx.expect_code(ex, 402, "credits.insufficient", "402 when the balance is below the cover's price")
        after = ctx.target.call("GET", S.CREDIT, label=ctx.result.check)
        if after.reply.data != 0:
            ctx.disagree("credits.not-charged", ex, "a rejected cover charges nothing (balance stays 0)",
                         f"balance {after.reply.data}")
    finally:
        ctl.put_account(key, credits=before)


@check("failures.rate-limit", "failures", "control")
def rate_limit(ctx):
    """Over the per-account limit: HTTP 429 with code 429 and a Retry-After in whole seconds."""
    ctl = ctx.need_control()
    key = f"kie-mock-verify-rate-{uuid.uuid4().hex[:8]}"  # an account whose window is empty
    ctl.put_account(key, credits=1000)
    try:
        with ctl.settings_changed(rate_limit=2, rate_window=60):
            exs = []
            for _ in range(3):
                ctx.budget.reserve()
                exs.append(ctx.target.call("POST", S.UPLOAD_COVER, json=_valid(ctx), label=ctx.result.check,
                                           retry_429=False, auth=f"Bearer {key}"))
                ctx.case()
    finally:
        ctl.delete_account(key)
    last = exs[-1]
    if ctx.expect_code(last, 429, "rate-limit.429", "429 for the 3rd new task within the window (limit 2)"):
        ra = last.reply.header("retry-after")
        if ra is None or not ra.isdigit() or int(ra) < 1:
            ctx.disagree("rate-limit.retry-after", last, "Retry-After: whole seconds >= 1", f"Retry-After: {ra}")
    for ex in exs[:2]:
        ctx.expect_code(ex, 200, "rate-limit.under", "200 while under the limit")


@check("failures.maintenance", "failures", "control")
def maintenance(ctx):
    """During maintenance every endpoint answers 455."""
    ctl = ctx.need_control()
    with ctl.settings_changed(maintenance=True):
        for ex in (ctx.target.call("POST", S.UPLOAD_COVER, json=_valid(ctx), label=ctx.result.check),
                   ctx.target.call("GET", S.CREDIT, label=ctx.result.check)):
            ctx.case()
            ctx.expect_code(ex, 455, "maintenance.455", "455 (Service Unavailable) during maintenance")


def _late_failure(ctx, code: int):
    ctl = ctx.need_control()
    ctx.need_receiver()
    ctl.arm_scenario(f"fail-{code}", key=ctx.target.api_key)
    ex, _, task_id, _, calls = submit_and_wait(ctx, ctx.result.check)
    check_payloads(ctx, ex, task_id, calls, expect_final="error")
    errors = [c for c in calls if c.stage == "error"]
    if errors and errors[-1].json.get("code") != code:
        ctx.disagree("callback.error-code", ex, f"the error callback's code is {code}",
                     f"code {errors[-1].json.get('code')}")
    info = ctx.target.call("GET", S.RECORD_INFO, params={"taskId": task_id}, label=ctx.result.check)
    if ctx.expect_code(info, 200, "record-info.known-task", "200 with the task", "record-info-response.json"):
        data = info.reply.data
        want = "SENSITIVE_WORD_ERROR" if code == 400 else "GENERATE_AUDIO_FAILED"
        if data.get("status") != want or data.get("errorCode") != code:
            ctx.disagree("record-info.failure", info, f"status {want} with errorCode {code}",
                         f"status {data.get('status')}, errorCode {data.get('errorCode')}")
    return ex, task_id


@check("failures.late-error", "failures", "control")
def late_error(ctx):
    """A task that fails late (fail-501): text, then an error callback with 501; record-info agrees."""
    _late_failure(ctx, 501)


@check("failures.refund-531", "failures", "control")
def refund_531(ctx):
    """Code 531 ('failed, credits refunded'): the balance comes back."""
    before = ctx.target.call("GET", S.CREDIT, label=ctx.result.check).reply.data
    ex, _ = _late_failure(ctx, 531)
    after = ctx.target.call("GET", S.CREDIT, label=ctx.result.check)
    if isinstance(before, int) and after.reply.data != before:
        ctx.disagree("credits.refund-531", ex, f"balance back to {before} after the 531 callback",
                     f"balance {after.reply.data}")


@check("failures.complete-only", "failures", "control")
def complete_only(ctx):
    """Stages skipped: 'complete' comes directly, and is still a valid complete callback."""
    ctl = ctx.need_control()
    ctx.need_receiver()
    ctl.arm_scenario("complete-only", key=ctx.target.api_key)
    ex, _, task_id, _, calls = submit_and_wait(ctx, ctx.result.check)
    check_payloads(ctx, ex, task_id, calls)


@check("failures.callback-retry", "failures", "control")
def callback_retry(ctx):
    """A receiver that answers 500 once gets the same callback again (at most 3 retries)."""
    ctl = ctx.need_control()
    rx = ctx.need_receiver()
    url, token = ctx.callback_url()
    rx.fail_next(token, 500)
    from .lifecycle import cover_body

    ex = ctx.submit(cover_body(ctx, url), label=ctx.result.check)
    ctx.case()
    if not ctx.expect_code(ex, 200, "upload-cover.accepted", "200 with a taskId", "upload-cover-response.json"):
        return
    task_id = ex.reply.data["taskId"]
    if not rx.wait_for_count(token, 2, timeout=3):
        pass
    for _ in range(20):  # hurry the retry along (the fake's backoff is 1, 2, 4 s)
        if len(rx.for_token(token)) >= 2:
            break
        ctl.fire(task_id)
        rx.wait_for_count(token, 2, timeout=0.5)
    got = rx.for_token(token)
    if len(got) < 2 or got[0].stage != got[1].stage:
        ctx.disagree("callback.retry", ex, "a callback answered with 500 is delivered again",
                     f"callbacks: {[(c.stage, c.status) for c in got]}")
