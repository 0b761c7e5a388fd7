"""The contract kit: one suite, any target, and a verdict on where they disagree.

Layers (each may import only those above it):

- `schemas`      the contract as data: openapi.yaml, schemas/*.json, the limit table, and
                 validators of our own (never the fake's: the oracle must not share its bugs);
- `strategies`   hypothesis strategies generated from the request schema's branches;
- `target`       a thin client over any target (the in-process WSGI app or an HTTP base URL):
                 pacing, 429 back-off, recording, key redaction;
- `receiver`, `control_client`   the local callback receiver and a client for /_mock;
- `runner`       checks, tiers (free / spends / control), the credit budget, results;
- `suites/*`     the checks themselves (spec, rules, lifecycle, failures);
- `report`, `replay`, `cli`      the verdict table, JUnit XML, record/replay, `kie-mock verify`;
- `broken`, `servers`, `pytest_plugin`   proof the suite bites, fakes in a thread, fixtures.
"""
