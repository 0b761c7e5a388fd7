"""Proof the suite bites: `verify` fails on each broken variant of the fake, naming the broken
rule, and passes on the fake itself (a conforming server that is not the fake: test_contract_verify)."""

import pytest

from contract.broken import VARIANTS, build
from contract.servers import ServerThread
from mock_server.cli import main


def verify(capsys, *args):
    code = main(["verify", "-q", "--examples", "2", *args])
    return code, capsys.readouterr().out


def rules_named(out: str) -> set[str]:
    """The RULE column of the disagreement table."""
    rows = out.split("DISAGREEMENTS", 1)[-1].split("\ntarget:", 1)[0]
    return {line.split("|", 1)[0].strip() for line in rows.splitlines() if "|" in line}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_verify_fails_on_each_broken_variant_and_names_the_rule(capsys, name):
    variant = VARIANTS[name]
    code, out = verify(capsys, "--app", f"contract.broken:{name}")
    assert code == 1, f"{name} ({variant.breaks}) went unnoticed:\n{out}"
    named = rules_named(out)
    assert any(r.startswith(variant.rule) for r in named), f"{variant.rule} not in {sorted(named)}"


def test_verify_passes_on_the_fake(capsys):
    code, out = verify(capsys)
    assert code == 0, out
    assert "DISAGREEMENTS" not in out


def test_a_broken_variant_over_http(capsys):
    """The same verdict through a socket (`--base-url`), not just in-process."""
    with ServerThread(build("stage-order-swapped")) as url:
        code, out = verify(capsys, "--base-url", url, "--suite", "lifecycle", "--suite", "failures")
    assert code == 1 and "callback.stage-order" in rules_named(out), out
