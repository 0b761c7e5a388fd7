"""schemas/upload-cover-request.json is generated from the limit table, and stays so."""

from __future__ import annotations

import json
from itertools import product

import pytest

from conftest import body
from mock_server import schema_gen
from mock_server.limits import LimitTable, ModelLimits, table
from mock_server.paths import UPLOAD_COVER_REQUEST
from mock_server.spec import FORMATS, Validator

GENERATED = json.loads(UPLOAD_COVER_REQUEST.read_text())


def test_the_committed_schema_is_not_stale():
    assert UPLOAD_COVER_REQUEST.read_text() == schema_gen.render(), \
        "schemas/upload-cover-request.json is stale: run `python -m mock_server.schema_gen`"


def _matching_branches(schema: dict, custom, instrumental, model) -> list[dict]:
    out = []
    for b in schema["oneOf"]:
        p = b["properties"]
        if (p["customMode"]["const"] is custom and p["instrumental"].get("const", instrumental) is instrumental
                and model in p["model"]["enum"]):
            out.append(b)
    return out


@pytest.mark.parametrize("custom, instrumental, model",
                         list(product([True, False], [True, False], table().model_names)))
def test_exactly_one_branch_per_mode_and_model_with_that_models_limits(custom, instrumental, model):
    (branch,) = _matching_branches(GENERATED, custom, instrumental, model)
    props, lim = branch["properties"], table().models[model]
    if custom:
        assert (props["style"]["maxLength"], props["title"]["maxLength"], props["prompt"]["maxLength"]) == \
               (lim.style, lim.title, lim.prompt)
        assert {"style", "title"} <= set(branch["required"])
        assert ("prompt" in branch["required"]) is (not instrumental)
    else:
        assert props["prompt"]["maxLength"] == table().non_custom_prompt
        assert props["style"]["maxLength"] == props["title"]["maxLength"] == 0
        assert "prompt" in branch["required"]
    assert {"uploadUrl", "customMode", "instrumental", "model", "callBackUrl"} <= set(branch["required"])


def test_every_branch_spells_out_every_field():
    fields = {"uploadUrl", "callBackUrl", "customMode", "instrumental", "model", "prompt", "style", "title",
              "negativeTags", "vocalGender", "styleWeight", "weirdnessConstraint", "audioWeight"}
    for branch in GENERATED["oneOf"]:
        assert set(branch["properties"]) == fields, branch["title"]


def test_a_new_docs_profile_is_a_data_change():
    """More models and a 500-character non-custom prompt (the newer docs): only the table changes."""
    old = table()
    newer = LimitTable(500, {**old.models, "V5": ModelLimits("V5", 1000, 100, 5000, "chirp-crow", 8),
                             "V4_5ALL": ModelLimits("V4_5ALL", 1000, 80, 5000, "chirp-auk", 8)})
    schema = schema_gen.build(newer)
    v = Validator(schema, format_checker=FORMATS)
    assert v.is_valid(body(model="V5", prompt="p" * 500))
    assert not v.is_valid(body(model="V5", prompt="p" * 501))
    custom = dict(body(model="V4_5ALL", customMode=True, style="s", prompt="la"), title="t" * 80)
    assert v.is_valid(custom)
    assert not v.is_valid({**custom, "title": "t" * 81})  # V4_5ALL has its own group: 80, not 100
    assert not v.is_valid(body(model="V6"))
    # Models sharing limits share a branch: 1 non-custom + 2 x (number of limit groups).
    groups = {(m.style, m.title, m.prompt) for m in newer.models.values()}
    assert len(schema["oneOf"]) == 1 + 2 * len(groups)


def test_main_writes_the_file(tmp_path, monkeypatch):
    target = tmp_path / "upload-cover-request.json"
    monkeypatch.setattr(schema_gen, "UPLOAD_COVER_REQUEST", target)
    assert schema_gen.main() == 0
    assert target.read_text() == schema_gen.render()
