"""How to: property-test your own client code with bodies generated from the contract.

`contract.strategies` reads the request schema's branches (and so the per-model limit table):
valid bodies reach every length limit and every legal weight; invalid ones break exactly one
rule and say which. `@given` tests take the session-scoped `kie_session` (state is not reset
between generated examples, and hypothesis rightly refuses function-scoped fixtures there).
"""

from hypothesis import given, settings

from contract import strategies as st


@settings(max_examples=25, deadline=None)
@given(st.valid_bodies())
def test_the_fake_accepts_every_valid_body(kie_session, body):
    assert kie_session.upload_cover(body).reply.code == 200


@settings(max_examples=25, deadline=None)
@given(st.invalid_bodies())
def test_the_fake_rejects_each_broken_rule(kie_session, case):
    reply = kie_session.upload_cover(case.body).reply
    assert reply.code == case.expected == 422, f"{case.name}: {case.note}"
