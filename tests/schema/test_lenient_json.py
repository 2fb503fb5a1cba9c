"""The lenient JSON reader takes only liberties that keep every value, and says which it took."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capmill.schema.lenient_json import ValueParseError, loads_lenient

from .strategies import examples

printable = st.text(st.characters(categories=("L", "N", "P", "S")) | st.just(" "), max_size=12)
values = st.recursive(
    printable | st.none() | st.booleans() | st.integers(-1000, 1000),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(printable, inner, max_size=4),
    max_leaves=12,
)


@examples(100)
@given(values)
def test_strict_json_is_read_as_is(value):
    assert loads_lenient(json.dumps(value, ensure_ascii=False)) == (value, [])


@examples(100)
@given(values)
def test_python_literals_read_back_equal(value):
    read, notes = loads_lenient(repr(value))
    assert read == value
    if not notes:  # then the Python repr happened to be strict JSON already
        assert json.loads(repr(value)) == value


@pytest.mark.parametrize(
    ("text", "value", "notes"),
    [
        ("['a', 'b',]", ["a", "b"], ["single-quoted strings", "trailing comma"]),
        ('{"a": [1, 2,],}', {"a": [1, 2]}, ["trailing comma"]),
        ("""['say "hi"', 'it\\'s']""", ['say "hi"', "it's"], ["single-quoted strings"]),
        ("[None, True, False]", [None, True, False], ["Python literals (None/True/False)"]),
        ('["a\tb"]', ["a\tb"], ["raw control characters inside strings"]),
    ],
)
def test_liberties(text, value, notes):
    assert loads_lenient(text) == (value, notes)


@pytest.mark.parametrize(
    ("text", "reason", "truncated"),
    [
        ('["a" "b"]', "Expecting ',' delimiter", False),  # Python would merge these into "ab": refused
        ("['a' 'b']", "Expecting ',' delimiter", False),
        ("[long, wooden]", "unquoted word 'long'", False),
        ('["a"]]', "unbalanced brackets", False),
        ('["a", "b', "no closing quote", True),
        ('[{"name": "x"}', "1 unclosed bracket", True),
        ("['a', 'b'", "1 unclosed bracket", True),
        ("", "empty value", False),
        ('["a"] ["b"]', "more than one value", False),
        ("[@]", "unexpected character '@'", False),
    ],
)
def test_refusals(text, reason, truncated):
    with pytest.raises(ValueParseError) as info:
        loads_lenient(text)
    assert reason in info.value.reason
    assert info.value.truncated is truncated
