"""Hypothesis strategies for structured captions, biased toward text that looks like the call's own markup."""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st

from capmill.schema import SETTINGS, StructuredCaption, SubjectValue

#: CAPMILL_HYPOTHESIS_SCALE=20 pytest tests/schema runs 20x the examples (a deep search; the default keeps CI fast).
SCALE = float(os.environ.get("CAPMILL_HYPOTHESIS_SCALE", "1"))


def examples(count: int) -> settings:
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None)


TRICKY = [
    "</parameter>",
    "\n</parameter>\n",
    "<parameter=setting>",
    "</function>",
    "</tool_call>",
    "<tool_call>",
    "<function=emit_caption_schema>",
    "<think>",
    "</think>",
    "<|im_end|>",
    "```",
    "\n",
    "\\",
    '"',
    "'",
    "None",
    "null",
    "{",
    "[",
    "]",
    ",",
    " ",
    "café",
    "\u2028",
    "\x85",
    "\t",
]


def texts(min_size: int = 0, max_size: int = 64) -> st.SearchStrategy[str]:
    """Any text (no surrogates), or a mix of markup fragments and short text, cut to the size limits."""
    mixed = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=6)), min_size=1, max_size=8).map("".join)
    return st.one_of(st.text(min_size=min_size, max_size=max_size), mixed.map(lambda s: s[:max_size])).filter(
        lambda s: len(s) >= min_size
    )


subjects = st.builds(SubjectValue, name=texts(1, 64), attributes=st.lists(texts(0, 40), max_size=8))
captions = st.builds(
    StructuredCaption,
    subjects=st.lists(subjects, max_size=8),
    actions=st.lists(texts(0, 60), max_size=8),
    setting=st.sampled_from(SETTINGS),
)

#: Small captions, for properties that parse many variants of each one.
small_captions = st.builds(
    StructuredCaption,
    subjects=st.lists(
        st.builds(SubjectValue, name=texts(1, 12), attributes=st.lists(texts(0, 8), max_size=2)), max_size=3
    ),
    actions=st.lists(texts(0, 12), max_size=2),
    setting=st.sampled_from(SETTINGS),
)
