"""The published schema and tool equal the json-captioner card's tool JSON, and the pydantic model enforces exactly that schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from capmill.schema import CAPTION_JSON_SCHEMA, EMIT_CAPTION_TOOL, StructuredCaption, SubjectValue, caption_tools

GOLDEN = Path(__file__).parent / "golden"
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"
TOOLS = json.loads((GOLDEN / "emit_caption_schema_tool.json").read_text(encoding="utf-8"))

SEED_1 = {
    "subjects": [
        {"name": "restaurant table", "attributes": ["long"]},
        {"name": "chairs", "attributes": ["rattan", "rounded back"]},
    ],
    "actions": [],
    "setting": "indoor",
}
SEED_2 = {
    "subjects": [
        {"name": "table", "attributes": ["long"]},
        {"name": "plant", "attributes": []},
        {"name": "chairs", "attributes": ["wooden"]},
    ],
    "actions": ["plant on top of table", "table surrounded with wooden chairs"],
    "setting": "indoor",
}


def test_tool_equals_seed_card_tool_json():
    assert len(TOOLS) == 1
    assert EMIT_CAPTION_TOOL == TOOLS[0]
    assert CAPTION_JSON_SCHEMA == TOOLS[0]["function"]["parameters"]
    assert EMIT_CAPTION_TOOL["function"]["name"] == "emit_caption_schema"


def test_pydantic_model_schema_is_the_seed_schema():
    assert StructuredCaption.model_json_schema() == CAPTION_JSON_SCHEMA


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the model cards live outside the repository")
def test_golden_is_the_seed_card_text_verbatim():
    card = next(SEEDS.glob("000_*.txt")).read_text(encoding="utf-8")
    golden = (GOLDEN / "emit_caption_schema_tool.json").read_text(encoding="utf-8").strip()
    assert golden in card


def test_caption_tools_is_a_copy():
    tools = caption_tools()
    tools[0]["function"]["parameters"]["properties"].clear()
    assert CAPTION_JSON_SCHEMA["properties"], "mutating the returned tools must not change the published schema"


@pytest.mark.parametrize("example", [SEED_1, SEED_2])
def test_seed_examples_validate(example):
    caption = StructuredCaption.model_validate(example)
    assert caption.style is None and caption.mood is None
    assert caption.model_dump(exclude={"style", "mood"}) == example
    jsonschema.validate(caption.model_dump(), CAPTION_JSON_SCHEMA)


BAD = {
    "nine subjects": {"subjects": [{"name": f"s{i}"} for i in range(9)]},
    "nine actions": {"actions": [f"a{i}" for i in range(9)]},
    "nine attributes": {"subjects": [{"name": "x", "attributes": [f"a{i}" for i in range(9)]}]},
    "65-character name": {"subjects": [{"name": "n" * 65}]},
    "empty name": {"subjects": [{"name": ""}]},
    "missing name": {"subjects": [{"attributes": []}]},
    "setting kitchen": {"setting": "kitchen"},
    "setting Indoor": {"setting": "Indoor"},
    "style noir": {"style": "noir"},
    "mood happy": {"mood": "happy"},
    "attribute not a string": {"subjects": [{"name": "x", "attributes": [3]}]},
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_model_and_json_schema_reject_the_same_values(name):
    with pytest.raises(ValidationError):
        StructuredCaption.model_validate(BAD[name])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(BAD[name], CAPTION_JSON_SCHEMA)


def test_extra_keys_are_refused_by_the_model():
    # The seed schema is silent on extra keys; the model refuses them so nothing unvalidated rides along.
    with pytest.raises(ValidationError):
        StructuredCaption.model_validate({"subjects": [], "location": "park"})
    with pytest.raises(ValidationError):
        SubjectValue.model_validate({"name": "dog", "color": "brown"})


def test_defaults():
    caption = StructuredCaption()
    assert (caption.subjects, caption.actions, caption.setting, caption.style, caption.mood) == (
        [],
        [],
        "unknown",
        None,
        None,
    )
    assert SubjectValue(name="dog").attributes == []
