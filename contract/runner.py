"""Checks, tiers, the credit budget, and a run over any target.

A check is a function `fn(ctx)` registered with `@check(name, suite, tier)`. It talks to the
target through `ctx.target`, and reports each disagreement with `ctx.disagree(...)` (what
was sent, what the spec says, what the target did). It raises `Skip` when it cannot run
here (no control API, budget exhausted, no public callback URL); a skipped check is
reported as SKIPPED, never as passed.

Tiers, so the real service costs nothing by surprise:
- free     requests the contract says are rejected before any charge (401, 422) and reads;
- spends   requests that create tasks (12 credits each, the one price seen); they run only
           within `--allow-spend` (in-process and kie-mock fakes cost nothing);
- control  needs the fake's control API (/_mock).
"""

from __future__ import annotations

import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable

from . import schemas as S
from .control_client import ControlClient
from .receiver import CallbackReceiver
from .strategies import DEFAULT_CALLBACK_URL, DEFAULT_UPLOAD_URL
from .target import Exchange, Target

TIERS = ("free", "spends", "control")
COVER_COST = 12  # credits per cover (shared/API_NOTES.md: one client's changelog)


class Skip(Exception):
    """The check cannot run against this target (the reason says why)."""


class OverBudget(Skip):
    pass


@dataclass
class Disagreement:
    check: str
    rule: str  # which rule of the contract, e.g. "title.maxLength[custom/lyrics V3_5]"
    request: str
    spec: str  # what the spec says
    target: str  # what the target did


@dataclass
class Result:
    check: str
    suite: str
    tier: str
    status: str = "passed"  # passed | failed | skipped | error
    reason: str = ""
    disagreements: list[Disagreement] = field(default_factory=list)
    duration: float = 0.0
    requests: int = 0
    cases: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckDef:
    name: str
    suite: str
    tier: str
    fn: Callable
    doc: str = ""


REGISTRY: list[CheckDef] = []


def check(name: str, suite: str, tier: str):
    assert tier in TIERS, tier

    def deco(fn):
        REGISTRY.append(CheckDef(name, suite, tier, fn, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""))
        return fn

    return deco


def all_checks() -> list[CheckDef]:
    from .suites import load

    load()
    order = {t: i for i, t in enumerate(TIERS)}
    return sorted(REGISTRY, key=lambda c: order[c.tier])  # stable: registration order within a tier


class Budget:
    """Credits the run may spend: None = unlimited (a fake). Stops *before* a cover would exceed it."""

    def __init__(self, limit: int | None, per_cover: int = COVER_COST):
        self.limit = limit
        self.per_cover = per_cover
        self.spent = 0
        self.covers = 0
        self.surprises = 0  # covers the target accepted although the contract says reject

    def affordable(self, n: int = 1) -> bool:
        return self.limit is None or self.spent + n * self.per_cover <= self.limit

    def reserve(self, n: int = 1) -> None:
        if not self.affordable(n):
            left = max(0, self.limit - self.spent)
            raise OverBudget(f"budget exhausted: a cover costs {self.per_cover} credits, {left} of {self.limit} "
                             f"left (raise it with --allow-spend CREDITS)")
        self.spent += n * self.per_cover
        self.covers += n

    def release(self, n: int = 1) -> None:
        """The target did not accept a reserved cover (so it did not charge)."""
        self.spent -= n * self.per_cover
        self.covers -= n

    def charge_surprise(self) -> None:
        self.surprises += 1
        self.spent += self.per_cover
        self.covers += 1

    def learn_price(self, observed: int) -> None:
        """The target charged `observed` credits for one cover: budget by the larger price."""
        if observed > self.per_cover:
            self.per_cover = observed

    def describe(self) -> str:
        if self.limit is None:
            return f"unlimited (spent {self.covers} covers)"
        return f"{self.spent}/{self.limit} credits ({self.covers} covers at {self.per_cover})"


class Context:
    """What a check sees: the target, the budget, the receiver, the control client, options."""

    def __init__(self, target: Target, *, budget: Budget, receiver: CallbackReceiver | None = None,
                 control: ControlClient | None = None, examples: int = 10, seed: int = 0,
                 upload_url: str = DEFAULT_UPLOAD_URL, callback_public: bool = False,
                 callback_timeout: float = 30.0, is_fake: bool = False, recorder=None,
                 spec_checks: bool = True):
        self.target = target
        self.budget = budget
        self.receiver = receiver
        self.control = control
        self.examples = examples
        self.seed = seed
        self.upload_url = upload_url
        self.callback_public = callback_public  # the receiver is reachable by the target
        self.callback_timeout = callback_timeout
        self.is_fake = is_fake
        self.recorder = recorder
        self.spec_checks = spec_checks
        self.result: Result | None = None
        self.shared: dict = {}  # what one check leaves for the next (the lifecycle's task)

    # -- reporting --------------------------------------------------------------------------------
    def disagree(self, rule: str, request: Exchange | str, spec: str, target: str | Exchange) -> None:
        req = request.describe() if isinstance(request, Exchange) else request
        did = target.reply.describe() if isinstance(target, Exchange) else target
        self.result.disagreements.append(Disagreement(self.result.check, rule, req, spec, did))

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def case(self) -> None:
        self.result.cases += 1

    # -- callbacks ----------------------------------------------------------------------------------
    def callback_url(self, token: str | None = None) -> tuple[str, str]:
        """(url, token): a fresh receiver URL when the target can reach the receiver, else the page's example."""
        token = token or uuid.uuid4().hex[:16]
        if self.receiver is not None and self.callback_public:
            return self.receiver.url(token), token
        return DEFAULT_CALLBACK_URL, token

    def need_receiver(self) -> CallbackReceiver:
        if self.receiver is None or not self.callback_public:
            raise Skip("the target cannot reach the local callback receiver: pass --callback-url "
                       "with a public address (a tunnel) that forwards to --callback-port")
        return self.receiver

    def need_control(self) -> ControlClient:
        if self.control is None:
            raise Skip("the target has no control API (/_mock): control checks need a kie-mock fake")
        return self.control

    def urls(self, token: str | None = None) -> dict:
        url, _ = self.callback_url(token)
        return {"upload_url": self.upload_url, "callback_url": url}

    # -- the verdicts every API answer gets -----------------------------------------------------------------
    def envelope(self, ex: Exchange, success_schema: str | None = None) -> bool:
        """The envelope rules: JSON {code, msg, data}, a documented code, the transport, the schema."""
        reply = ex.reply
        body = reply.json()
        rule = "envelope"
        if not isinstance(body, dict) or not isinstance(body.get("code"), int) or isinstance(body.get("code"), bool):
            self.disagree(rule, ex, "every answer is the JSON envelope {code, msg, data} with an integer code",
                          f"HTTP {reply.status}, body {reply.content[:80]!r}")
            return False
        ok = True
        # error-envelope.json requires code and msg (data is null when present); success also needs data
        missing = [k for k in ("code", "msg", "data") if k not in body and (k != "data" or body["code"] == 200)]
        if missing or not isinstance(body.get("msg"), str):
            self.disagree(rule + ".fields", ex, "the envelope has code, msg (a string) and, on success, data",
                          f"keys {sorted(body)}" + (f", msg {type(body.get('msg')).__name__}" if "msg" in body else ""))
            ok = False
        code = body["code"]
        if code not in S.documented_codes():
            self.disagree("envelope.code-documented", ex,
                          f"code is one of {', '.join(map(str, S.documented_codes()))} (the endpoint page)",
                          f"code {code}")
            ok = False
        allowed = {429} if code == 429 else {200, code}
        if reply.status not in allowed:
            self.disagree("envelope.transport", ex,
                          "errors ride in HTTP 200 with the code in the body (or the HTTP status mirrors the code);"
                          " rate limiting is HTTP 429", f"HTTP {reply.status} with code {code}")
            ok = False
        ctype = (reply.header("content-type") or "").split(";")[0].strip()
        if ctype != "application/json":
            self.disagree("envelope.content-type", ex, "Content-Type: application/json", ctype or "no Content-Type")
            ok = False
        if ok:
            name = success_schema if code == 200 and success_schema else "error-envelope.json" if code != 200 else None
            if name:
                errs = S.errors(name, body)
                if errs:
                    self.disagree(f"schema:{name}", ex, f"the body validates against schemas/{name}", errs[0])
                    ok = False
        return ok

    def judge_limited(self, ex: Exchange) -> None:
        """A 429 the target answered (and the run waited out): the error envelope, HTTP 429, and a
        Retry-After in whole seconds (API_NOTES), like the rate-limit check's own."""
        self.envelope(ex)
        ra = ex.reply.header("retry-after")
        if ra is None or not ra.isdigit() or int(ra) < 1:
            self.disagree("rate-limit.retry-after", ex, "Retry-After: whole seconds >= 1", f"Retry-After: {ra}")

    def expect_code(self, ex: Exchange, expected: set[int] | int, rule: str, spec: str,
                    success_schema: str | None = None) -> bool:
        expected = {expected} if isinstance(expected, int) else set(expected)
        fine = self.envelope(ex, success_schema)
        code = ex.reply.code
        if code not in expected:
            self.disagree(rule, ex, spec, ex)
            return False
        return fine

    # -- spending -------------------------------------------------------------------------------------
    def submit(self, body: dict, *, label: str, headers: dict | None = None) -> Exchange:
        """POST a body the contract accepts: it spends, so the budget is asked first."""
        self.budget.reserve()
        learn = not self.is_fake and self.budget.limit is not None and not self.shared.get("price_checked")
        before = self._balance() if learn else None
        ex = self.target.call("POST", S.UPLOAD_COVER, json=body, label=label, headers=headers)
        if ex.reply.code != 200:
            self.budget.release()
        elif learn:  # chat/credit says what a cover really costs: budget by that if it is more
            self.shared["price_checked"] = True
            after = self._balance()
            if isinstance(before, int) and isinstance(after, int) and before > after:
                self.budget.learn_price(before - after)
                self.note(f"a cover cost {before - after} credits (chat/credit)")
        return ex

    def _balance(self):
        ex = self.target.call("GET", S.CREDIT, label="budget")
        return ex.reply.data if ex.reply.code == 200 else None

    def may_send_rejected(self) -> bool:
        """Whether a body the contract rejects may still be sent: once the target has accepted one
        (and charged for it), only while another such acceptance would fit in the budget. So a
        lenient target costs at most one cover beyond --allow-spend, the one that showed it."""
        b = self.budget
        return b.limit is None or b.surprises == 0 or b.affordable()

    def send_rejected(self, body, *, label: str, auth=..., headers: dict | None = None) -> Exchange:
        """POST a body the contract rejects (free). If the target accepts it anyway, that costs."""
        if not self.may_send_rejected():
            raise Skip("stopped sending: the target accepted bodies the contract rejects, and one more "
                       "acceptance would exceed the budget (--allow-spend)")
        ex = self.target.call("POST", S.UPLOAD_COVER, json=body, label=label, auth=auth, headers=headers,
                              idempotent=resendable(body))
        if ex.reply.code == 200 and isinstance(ex.reply.data, dict) and "taskId" in ex.reply.data:
            self.budget.charge_surprise()
        return ex


def resendable(body) -> bool:
    """Whether a POST of this body to upload-cover may be sent again after a 5xx: no target could
    take it for a cover. A valid body refused only for its auth or Content-Type would be a second
    task on a target that accepts it."""
    return not S.request_valid(body)


# -- running --------------------------------------------------------------------------------------------
def run_checks(ctx: Context, checks: list[CheckDef] | None = None, *, progress=None,
               only: Callable[[CheckDef], bool] | None = None) -> list[Result]:
    checks = [c for c in (all_checks() if checks is None else checks) if only is None or only(c)]
    results = []
    for i, c in enumerate(checks, 1):
        r = Result(c.name, c.suite, c.tier)
        ctx.result = r
        before = ctx.target.requests
        started = time.monotonic()
        if progress:
            progress.start(i, len(checks), c)
        limited = len(ctx.target.limited)
        try:
            try:
                c.fn(ctx)
            finally:
                for ex in ctx.target.limited[limited:]:  # a 429 run into along the way is judged too
                    ctx.judge_limited(ex)
            r.status = "failed" if r.disagreements else "passed"
        except Skip as exc:
            r.status = "failed" if r.disagreements else "skipped"
            r.reason = str(exc)
        except Exception as exc:  # a crash of the check, or the target dropped the connection
            r.status = "error"
            r.reason = f"{type(exc).__name__}: {exc}"
            r.notes.append(traceback.format_exc(limit=6))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (a CI job cancelled): what ran so far is reported
            r.status = "error"
            r.reason = f"interrupted: this check and the {len(checks) - i} after it did not finish"
        r.duration = time.monotonic() - started
        r.requests = ctx.target.requests - before
        results.append(r)
        if progress:
            progress.done(i, len(checks), r)
        if r.reason.startswith("interrupted:") and r.status == "error":
            break
    return results


class Progress:
    """One line per check on stderr while the run goes."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet

    def start(self, i: int, n: int, c: CheckDef) -> None:
        if not self.quiet:
            self.stream.write(f"[{i:>2}/{n}] {c.name:<34} {c.tier:<8} ... ")
            self.stream.flush()

    def done(self, i: int, n: int, r: Result) -> None:
        if self.quiet:
            return
        extra = f" ({len(r.disagreements)} disagreement{'s' * (len(r.disagreements) != 1)})" if r.disagreements else ""
        why = f": {r.reason}" if r.status in ("skipped", "error") and r.reason else ""
        self.stream.write(f"{r.status.upper()}{extra}  {r.requests} req, {r.duration:.1f}s{why}\n")
        self.stream.flush()
