"""Property: any StructuredCaption, written as the Qwen3.5 chat template writes it, parses back to an equal object."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from capmill.schema import StructuredCaption, parse_tool_call, render_tool_call
from capmill.schema.parse import _slow

from .strategies import captions, examples, small_captions

FEW = examples(60)
MANY = examples(150)


@FEW
@given(st.one_of(captions, small_captions), st.booleans())
def test_render_then_parse_is_identity(caption: StructuredCaption, include_nulls: bool):
    text = render_tool_call(caption, include_nulls=include_nulls)
    result = parse_tool_call(text)
    assert (result.status, result.errors) == ("ok", [])
    assert result.caption == caption
    assert result.form == "qwen3_xml"


@FEW
@given(st.one_of(captions, small_captions))
def test_general_parser_also_round_trips(caption: StructuredCaption):
    # The fast path handles clean calls; the general parser must agree whenever it is the one that runs.
    result = _slow(render_tool_call(caption))
    assert (result.status, result.errors, result.caption) == ("ok", [], caption)


@MANY
@given(
    small_captions,
    st.sampled_from(["", "Sure.\n\n", "reasoning about the caption\n</think>\n\n", "<think>\n\n</think>\n\n"]),
)
def test_round_trip_after_prose_or_reasoning(caption: StructuredCaption, prefix: str):
    result = parse_tool_call(prefix + render_tool_call(caption) + "<|im_end|>\n")
    assert (result.status, result.caption) == ("ok", caption)


@MANY
@given(small_captions)
def test_json_forms_round_trip(caption: StructuredCaption):
    args = caption.model_dump()
    hermes = "<tool_call>\n" + json.dumps({"name": "emit_caption_schema", "arguments": args}, ensure_ascii=False)
    for text in (hermes + "\n</tool_call>", json.dumps(args)):
        result = parse_tool_call(text)
        assert (result.status, result.caption) == ("ok", caption), result.errors


@examples(40)
@given(small_captions, st.booleans())
def test_a_cut_off_output_never_yields_a_different_caption(caption: StructuredCaption, include_nulls: bool):
    # Cut the output at every position: the parser either recovers the very same caption or refuses.
    text = render_tool_call(caption, include_nulls=include_nulls)
    for cut in range(len(text) + 1):
        result = parse_tool_call(text[:cut])
        assert result.status in ("ok", "repaired", "invalid")
        if result.caption is not None:
            assert result.caption == caption, (text[:cut], result.errors)
        else:
            assert result.status == "invalid" and result.errors
    # Once every value is written in full, only closing tags can be missing: the caption is always recovered.
    complete_from = text.index("\n</parameter>\n", text.index("<parameter=setting>"))
    for cut in range(complete_from, len(text) + 1):
        assert parse_tool_call(text[:cut]).caption == caption, text[:cut]
