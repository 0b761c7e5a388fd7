"""The spec-driven suite: schemathesis reaches our boundaries, and its checks see through the envelope."""

import pytest

pytest.importorskip("schemathesis")

from contract import schemas as S  # noqa: E402
from contract.suites import spec  # noqa: E402
from contract.target import Exchange, Reply  # noqa: E402


def test_the_coverage_phase_reaches_every_branch_limit_at_and_one_past():
    """Why the request schema is a oneOf of spelled-out branches: schemathesis walks each
    branch's maxLength (at and one past). It draws one model per branch, so the kit's own
    strategies (contract.strategies.boundary_cases) cover the other models."""
    m = spec.measure_boundaries(n_fuzz=50, seed=0)
    cov = m["coverage"]
    assert m["branch_limits"] == 13 and m["limits"] == 28
    assert cov["branch_at"] == cov["branch_past"] == m["branch_limits"], m
    assert cov["at"] == cov["past"] == 13 and cov["boundary_bodies"] >= 26, m
    assert m["fuzzing"]["at"] <= 2  # random fuzzing alone almost never lands on a limit


def test_the_lifted_response_carries_the_envelope_code():
    class T:
        base_url = "http://localhost"

    class Ctx:
        target = T()

    env = b'{"code":422,"msg":"title: too long","data":null}'
    ex = Exchange("POST", S.UPLOAD_COVER, {}, {"Content-Type": "application/json"}, {"a": 1},
                  Reply(200, {"content-type": "application/json"}, env))
    assert spec._lifted(Ctx(), ex).status_code == 422
    unknown = Exchange("GET", S.RECORD_INFO, {"taskId": "x"}, {}, None,
                       Reply(200, {"content-type": "application/json"}, env))
    assert spec._lifted(Ctx(), unknown).status_code == 404  # "recordInfo is null": a missing resource


def test_selection_keeps_every_rule_probe():
    from schemathesis import GenerationMode

    op = spec.operations()[0]
    cases = spec.coverage_cases(op, [GenerationMode.NEGATIVE])
    chosen = spec.select(cases, 0, seed=0)
    probes = [c for c in cases if spec._scenario(c) in spec.RULE_SCENARIOS]
    assert len(chosen) >= len(probes) > 100
    assert len(spec.select(cases, 10, seed=0)) == len(chosen) + 10
