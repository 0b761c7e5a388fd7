"""How to: run the whole contract verification from Python (what `kie-mock verify` does).

In CI against the real service, prefer the command line:
    kie-mock verify --base-url https://api.kie.ai --api-key "$KIE_API_KEY" --allow-spend 60 \\
        --callback-url "$TUNNEL_URL" --callback-port 8788 --junit-xml contract.xml --record recordings/
"""

from mock_server.cli import main


def test_the_fake_agrees_with_its_contract(tmp_path, capsys):
    # --suite picks suites (auth, rules, spec, lifecycle, failures) or single checks; --tier picks tiers.
    code = main(["verify", "--suite", "auth", "--suite", "lifecycle", "-q",
                 "--junit-xml", str(tmp_path / "contract.xml")])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "the target AGREES with the contract" in out
    assert (tmp_path / "contract.xml").read_text().count("<testcase") == 6
