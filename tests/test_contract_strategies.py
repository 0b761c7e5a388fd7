"""The strategies follow the schema (and so the limit table), and the fake agrees with them."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from contract import schemas as S
from contract import strategies as T
from mock_server.paths import MODEL_LIMITS
from mock_server.rules import check_upload_cover, diagnose

TABLE = json.loads(MODEL_LIMITS.read_text())
QUICK = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_every_limit_of_the_table_is_reached_at_and_one_past():
    cases = T.boundary_cases()
    at = {(c.scope.split()[-1], c.scope.split()[0]): c.body for c in cases if c.expected == 200}
    for model, lim in TABLE["models"].items():
        for scope in ("custom/instrumental", "custom/lyrics"):
            body = at[(model, scope)]
            assert len(body["style"]) == lim["style"] and len(body["title"]) == lim["title"]
            assert len(body.get("prompt", "")) == lim["prompt"]
        assert len(at[(model, "non-custom")]["prompt"]) == TABLE["nonCustomPromptMaxLength"]
    past = {(c.field, c.scope) for c in cases if c.expected == 422}
    assert ("title", "custom/lyrics V3_5") in past and ("prompt", "non-custom V4_5PLUS") in past
    assert len(past) == sum(1 for b in S.branches() for m in b.models for f in S.TEXT_FIELDS
                            if b.limit(f) is not None)


def test_labels_match_the_schema_and_the_fake():
    for case in T.boundary_cases() + T.weight_cases() + T.rule_cases():
        assert S.request_valid(case.body) == (case.expected == 200), case.name
        verdict = check_upload_cover(case.body)
        assert (verdict is None) == (case.expected == 200), (case.name, verdict)
        if verdict is not None:
            assert verdict.code == case.expected


def test_every_legal_weight_is_drawn_and_accepted():
    values = S.legal_weights()
    assert len(values) == 101 and values[0] == 0.0 and values[-1] == 1.0
    drawn = set(T.draw_examples(T.weights(), 3000, seed=1))
    assert drawn == set(values)
    base = T.base_body(S.branches()[0], "V4")
    for v in values:
        assert check_upload_cover({**base, "styleWeight": v, "audioWeight": v, "weirdnessConstraint": v}) is None, v


@QUICK
@given(T.valid_bodies())
def test_valid_bodies_are_accepted_by_the_fake(body):
    assert S.request_valid(body)
    assert check_upload_cover(body) is None, body


@QUICK
@given(T.invalid_bodies())
def test_invalid_bodies_break_exactly_one_rule(case):
    assert case.expected == 422 and not S.request_valid(case.body)
    verdict = check_upload_cover(case.body)
    assert verdict is not None and verdict.code == 422
    reasons = diagnose(case.body)
    assert len(reasons) == 1, (case.name, reasons)  # one field, one keyword
    assert reasons[0][1:3] == (case.field, case.rule), (case.name, reasons)


@QUICK
@given(hst.sampled_from(S.branches()).flatmap(lambda b: T.valid_bodies(b).map(lambda body: (b, body))))
def test_each_branch_reaches_its_limits(pair):
    branch, body = pair
    assert body["customMode"] is branch.custom and body["model"] in branch.models
    for name in S.TEXT_FIELDS:
        if isinstance(body.get(name), str):
            assert len(body[name]) <= branch.limit(name)


def test_draws_are_reproducible_for_a_seed():
    a = T.draw_examples(T.valid_bodies(), 5, seed=7)
    b = T.draw_examples(T.valid_bodies(), 5, seed=7)
    assert a == b and len(a) == 5
