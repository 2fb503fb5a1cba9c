"""Every raw model output in tests/data/tool_calls/cases.jsonl parses to its expected status and caption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capmill.schema import StructuredCaption, parse_tool_call
from capmill.schema.parse import _fast, _slow

CASES_FILE = Path(__file__).parents[1] / "data" / "tool_calls" / "cases.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
BY_ID = {case["id"]: case for case in CASES}

# One case at least for every shape the issue names (kept here so a deleted case is noticed).
REQUIRED = [
    "ok_seed_example_1",  # the Qwen3.5 format
    "ok_style_mood_None",  # null written None
    "ok_style_mood_null",  # ... null
    "ok_style_mood_empty",  # ... left empty
    "ok_hermes_json",  # Qwen2.5 / Hermes JSON form
    "ok_bare_json",  # constrained-JSON decoding
    "ok_leading_prose",  # free text before the call
    "ok_think_block",  # <think> reasoning before the call
    "rep_other_call_first",  # several calls: take emit_caption_schema
    "ok_params_reordered",  # any order
    "rep_repeated_param_same_value",  # repeated
    "inv_repeated_param_different",
    "inv_cut_inside_subjects_string",  # cut off by the token limit
    "rep_cut_after_setting_value",
    "rep_missing_last_param_close",  # missing </parameter>
    "rep_missing_function_close",  # missing </function>
    "rep_missing_tool_call_close",  # missing </tool_call>
    "rep_python_style_list",  # Python-style lists
    "rep_trailing_commas",  # trailing commas
    "rep_attributes_as_string",  # attributes given as a string
    "rep_nine_subjects",  # 9 subjects
    "inv_name_70_chars",  # a 70-character name
    "rep_setting_kitchen",  # setting "kitchen"
    "rep_setting_capitalised",  # setting "Indoor"
    "rep_style_noir",  # style "noir"
]


def _expected(case):
    return None if case["caption"] is None else StructuredCaption.model_validate(case["caption"])


def test_corpus_size_and_coverage():
    assert len(CASES) >= 60
    assert len(BY_ID) == len(CASES), "case ids must be unique"
    assert {c["status"] for c in CASES} == {"ok", "repaired", "invalid"}
    assert not [r for r in REQUIRED if r not in BY_ID]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case):
    result = parse_tool_call(case["raw"])
    assert result.status == case["status"], result.errors
    assert result.caption == _expected(case)
    assert result.raw == case["raw"]
    joined = "\n".join(result.errors)
    for fragment in case["errors"]:
        assert fragment in joined
    if case["status"] == "ok":
        assert result.errors == []
    else:  # a repair is never silent and a refusal always says why
        assert result.errors
    json.dumps(result.to_dict())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_repair_false_reports_instead_of_repairing(case):
    repaired = parse_tool_call(case["raw"])
    strict = parse_tool_call(case["raw"], repair=False)
    if repaired.status == "ok":
        assert (strict.status, strict.caption, strict.errors) == ("ok", repaired.caption, [])
    elif repaired.status == "repaired":
        assert strict.status == "invalid" and strict.caption is None
        assert strict.errors == [f"needs repair (repair=False): {note}" for note in repaired.errors]
    else:
        assert (strict.status, strict.caption, strict.errors) == ("invalid", None, repaired.errors)
    assert strict.raw == case["raw"]


def test_fast_path_agrees_with_the_general_parser():
    fast_cases = [c for c in CASES if _fast(c["raw"].rstrip()) is not None]
    assert len(fast_cases) >= 10, "the clean cases should take the fast path"
    for case in fast_cases:
        fast, slow = _fast(case["raw"].rstrip()), _slow(case["raw"])
        assert (fast.status, fast.caption, fast.errors) == (slow.status, slow.caption, slow.errors), case["id"]
    for case in CASES:
        if case["status"] != "ok":
            assert _fast(case["raw"].rstrip()) is None, f"{case['id']} must not pass the fast path"
