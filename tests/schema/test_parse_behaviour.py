"""parse_tool_call never raises, keeps the raw text, and makes the choices docs/parsing.md describes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import capmill
from capmill.schema import ParseResult, StructuredCaption, parse_tool_call, render_tool_call
from capmill.schema import normalize as normalize_module

from .strategies import TRICKY, examples
from .test_schema_golden import SEED_1, SEED_2

CALL_1 = render_tool_call(StructuredCaption.model_validate(SEED_1))
CALL_2 = render_tool_call(StructuredCaption.model_validate(SEED_2))


def test_top_level_exports_resolve():
    assert capmill.parse_tool_call is parse_tool_call
    assert capmill.ParseResult is ParseResult
    assert capmill.StructuredCaption is StructuredCaption
    assert capmill.ground.__module__ == "capmill.schema.grounding"
    assert capmill.GroundingReport.__name__ == "GroundingReport"


@examples(200)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.sampled_from(TRICKY + ["{", "}", "<parameter=subjects>"]), max_size=30).map("".join),
    )
)
def test_never_raises_on_any_text(text):
    result = parse_tool_call(text)
    assert result.status in ("ok", "repaired", "invalid")
    assert result.raw == text
    assert (result.caption is None) == (result.status == "invalid")
    if result.status != "ok":
        assert result.errors


@examples(150)
@given(st.data())
def test_never_raises_on_a_damaged_call(data):
    # Delete, duplicate or insert a piece anywhere in a valid call.
    text = data.draw(st.sampled_from([CALL_1, CALL_2]))
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 40)))
    piece = data.draw(st.sampled_from(["", text[i:j], *TRICKY]))
    damaged = text[:i] + piece + text[j:]
    result = parse_tool_call(damaged)
    assert result.status in ("ok", "repaired", "invalid") and result.raw == damaged


@pytest.mark.parametrize("value", [None, 42, b"\xff\xfe", ["<tool_call>"]])
def test_non_text_input_is_invalid_not_an_exception(value):
    result = parse_tool_call(value)
    assert result.status == "invalid" and result.caption is None and result.errors


def test_bytes_are_decoded():
    assert parse_tool_call(CALL_1.encode()).status == "ok"


def test_an_internal_error_becomes_an_invalid_result(monkeypatch):
    def broken(self, args):
        raise RuntimeError("boom")

    monkeypatch.setattr(normalize_module.Normalizer, "arguments", broken)
    result = parse_tool_call(CALL_1.replace("indoor", "Indoor"))  # not clean: takes the general path
    assert result.status == "invalid" and "internal parser error (RuntimeError: boom)" in result.errors[0]
    assert result.raw == CALL_1.replace("indoor", "Indoor")


def test_each_repair_is_one_note():
    text = CALL_1.replace("indoor", "Indoor").replace("</function>\n</tool_call>", "</function>")
    result = parse_tool_call(text)
    assert result.status == "repaired"
    assert result.errors == ["call has no </tool_call> after </function>", "setting 'Indoor' read as 'indoor'"]


def test_repair_false_lists_every_problem():
    text = CALL_1.replace("indoor", "Indoor").replace("</function>\n</tool_call>", "</function>")
    result = parse_tool_call(text, repair=False)
    assert (result.status, result.caption) == ("invalid", None)
    assert len(result.errors) == 2 and all(e.startswith("needs repair (repair=False): ") for e in result.errors)
    assert parse_tool_call(CALL_1, repair=False).status == "ok"


def test_refusal_reasons_come_before_repair_notes():
    text = CALL_2.replace('"plant"', '"' + "p" * 70 + '"').replace("</tool_call>", "")
    result = parse_tool_call(text)
    assert result.status == "invalid"
    assert result.errors[0].startswith("subjects[1].name is 70 characters")
    assert "call has no </tool_call> after </function>" in result.errors


def test_the_first_valid_call_wins_and_the_choice_is_noted():
    result = parse_tool_call(CALL_2 + "\n" + CALL_1)
    assert result.caption == StructuredCaption.model_validate(SEED_2)
    assert "used call 1" in result.errors[-1]


def test_forms_are_reported():
    assert parse_tool_call(CALL_1).form == "qwen3_xml"
    assert parse_tool_call(json.dumps(SEED_1)).form == "json"
    hermes = "<tool_call>\n" + json.dumps({"name": "emit_caption_schema", "arguments": SEED_1}) + "\n</tool_call>"
    assert parse_tool_call(hermes).form == "hermes_json"


def test_a_caption_is_never_returned_for_a_call_cut_inside_its_values():
    for cut in (CALL_2.index("wooden"), CALL_2.index("surrounded"), CALL_2.index("<parameter=setting>") + 22):
        result = parse_tool_call(CALL_2[:cut])
        assert result.status == "invalid", CALL_2[:cut]


def test_to_dict_round_trips_through_json():
    data = json.loads(json.dumps(parse_tool_call(CALL_1, source_text="A long restaurant table").to_dict()))
    assert data["status"] == "ok" and data["structured"]["setting"] == "indoor" and data["form"] == "qwen3_xml"
    assert data["grounding"]["total"] == 5
