"""render_tool_call writes exactly what the real Qwen3.5 chat template writes for an assistant's tool call."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import capmill
from capmill.schema import StructuredCaption, caption_tools, parse_tool_call, render_tool_call, tool_arguments

from .strategies import examples, small_captions
from .test_schema_golden import SEED_1, SEED_2

TEMPLATE = Path(capmill.__file__).parent / "testing" / "templates" / "qwen3_5_small.jinja"
GOLDEN = Path(__file__).parent / "golden"
ASSISTANT_OPEN = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def render_chat():
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = TEMPLATE.read_text(encoding="utf-8")

    def render(caption: StructuredCaption, include_nulls: bool) -> str:
        call = {"type": "function", "function": {"name": "emit_caption_schema"}}
        call["function"]["arguments"] = tool_arguments(caption, include_nulls=include_nulls)
        messages = [
            {"role": "system", "content": "You structure captions."},
            {"role": "user", "content": "A long restaurant table with rattan rounded back chairs."},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[messages], tools=caption_tools(), chat_template=template
        )
        text = rendered[0]
        assert text.endswith("<|im_end|>\n")
        start = text.rindex(ASSISTANT_OPEN) + len(ASSISTANT_OPEN)
        return text[start : -len("<|im_end|>\n")]

    return render


@pytest.mark.parametrize("example", [SEED_1, SEED_2])
@pytest.mark.parametrize("include_nulls", [False, True])
def test_seed_examples_match_the_template(render_chat, example, include_nulls):
    caption = StructuredCaption.model_validate(example)
    from_template = render_chat(caption, include_nulls)
    assert render_tool_call(caption, include_nulls=include_nulls) == from_template
    result = parse_tool_call(from_template)
    assert (result.status, result.caption) == ("ok", caption)


@examples(25)
@given(small_captions, st.booleans())
def test_any_caption_matches_the_template(render_chat, caption, include_nulls):
    assert render_tool_call(caption, include_nulls=include_nulls) == render_chat(caption, include_nulls)


def test_golden_seed_example_call():
    # What the model is trained to emit for the card's example 1; a change here changes the training data.
    golden = (GOLDEN / "seed_example_1_tool_call.txt").read_text(encoding="utf-8")
    assert render_tool_call(StructuredCaption.model_validate(SEED_1)) == golden


def test_training_arguments_omit_style_and_mood():
    args = tool_arguments(StructuredCaption.model_validate(SEED_2))
    assert list(args) == ["subjects", "actions", "setting"]
    assert args == SEED_2
