"""Free tier: authentication. 'All APIs require authentication via Bearer Token' (the page)."""

from __future__ import annotations

import uuid

from .. import schemas as S
from ..runner import check
from ..strategies import base_body

SPEC_401 = "401: every endpoint requires 'Authorization: Bearer <API key>'"


def _calls(ctx, auth, label):
    body = base_body(S.branches()[0], S.models()[0], **ctx.urls())
    yield ctx.send_rejected(body, label=label, auth=auth)
    yield ctx.target.call("GET", S.RECORD_INFO, params={"taskId": "0" * 32}, auth=auth, label=label)
    yield ctx.target.call("GET", S.CREDIT, auth=auth, label=label)


def _expect_401(ctx, auth, rule, why):
    for ex in _calls(ctx, auth, ctx.result.check):
        ctx.case()
        ctx.expect_code(ex, 401, rule, f"{SPEC_401}; {why}")


@check("auth.missing-key", "auth", "free")
def missing_key(ctx):
    """No Authorization header: 401 on every endpoint."""
    _expect_401(ctx, None, "auth.required", "none was sent")


@check("auth.malformed", "auth", "free")
def malformed(ctx):
    """A header that is not 'Bearer <key>': 401."""
    for value in ("Bearer", f"Basic {ctx.target.api_key}"):
        _expect_401(ctx, value, "auth.bearer-scheme", f"sent {value.split()[0]!r} scheme"
                    if " " in value else "sent 'Bearer' with no key")


@check("auth.unknown-key", "auth", "free")
def unknown_key(ctx):
    """A key the service never issued: 401."""
    _expect_401(ctx, f"Bearer kie-mock-verify-unknown-{uuid.uuid4().hex}", "auth.key-known", "the key is unknown")
