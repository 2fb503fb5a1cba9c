"""Read a JSON value the way a small model tends to write it, or say exactly why it cannot be read.

Accepted beyond strict JSON, each reported in the returned notes: Python literals (single-quoted strings,
None/True/False), trailing commas, raw control characters inside strings. Refused, with the reason: unquoted
words, missing commas, unbalanced brackets and a value cut off part-way (reported as `truncated`, so the caller
can say the output hit its token limit). No guessing of where items start or end.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STRICT = json.JSONDecoder()
_LOOSE = json.JSONDecoder(strict=False)

_TOKEN = re.compile(
    r"""(\s+)"""  # 1 whitespace
    r"""|("(?:[^"\\]|\\.)*")"""  # 2 double-quoted string
    r"""|('(?:[^'\\]|\\.)*')"""  # 3 single-quoted (Python) string
    r"""|([\[\]{}:,])"""  # 4 punctuation
    r"""|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""  # 5 number
    r"""|([A-Za-z_]\w*)"""  # 6 bare word
    r"""|(.)""",  # 7 anything else
    re.S,
)
_SQ_ESCAPE = re.compile(r"""\\(.)|\"""", re.S)
_WORDS = {"null": "null", "true": "true", "false": "false", "None": "null", "True": "true", "False": "false"}
_PYTHON_WORDS = frozenset({"None", "True", "False"})
_CLOSE = {"]": "[", "}": "{"}


class ValueParseError(ValueError):
    """A value could not be read; `truncated` is True when it ends part-way (unclosed string or bracket)."""

    def __init__(self, reason: str, truncated: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.truncated = truncated


def _sq_fix(match: re.Match[str]) -> str:
    char = match.group(1)
    if char is None:  # a bare double quote inside a single-quoted string must be escaped in JSON
        return '\\"'
    if char == "'":
        return "'"
    return match.group(0)


def _single_to_double(token: str) -> str:
    return '"' + _SQ_ESCAPE.sub(_sq_fix, token[1:-1]) + '"'


def loads_lenient(text: str) -> tuple[Any, list[str]]:
    """Parse `text` as one JSON value; return (value, notes) where notes name every liberty taken."""
    try:
        return _STRICT.decode(text), []
    except (ValueError, RecursionError):
        pass
    out: list[str] = []
    stack: list[str] = []
    notes: list[str] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastindex
        token = match.group(kind or 0)
        if kind == 1:
            continue
        if kind == 2 or kind == 5:
            out.append(token)
        elif kind == 3:
            out.append(_single_to_double(token))
            if "single-quoted strings" not in notes:
                notes.append("single-quoted strings")
        elif kind == 4:
            if token in "[{":
                stack.append(token)
            elif token in "]}":
                if out and out[-1] == ",":
                    out.pop()
                    if "trailing comma" not in notes:
                        notes.append("trailing comma")
                if not stack or stack[-1] != _CLOSE[token]:
                    raise ValueParseError(f"unbalanced brackets: unexpected {token!r}")
                stack.pop()
            out.append(token)
        elif kind == 6:
            if token not in _WORDS:
                raise ValueParseError(f"unquoted word {token!r} (strings must be quoted)")
            if token in _PYTHON_WORDS and "Python literals (None/True/False)" not in notes:
                notes.append("Python literals (None/True/False)")
            out.append(_WORDS[token])
        else:
            if token in "\"'":
                raise ValueParseError("a string has no closing quote", truncated=True)
            raise ValueParseError(f"unexpected character {token!r}")
    if stack:
        raise ValueParseError(f"{len(stack)} unclosed bracket(s)", truncated=True)
    if not out:
        raise ValueParseError("empty value")
    joined = "".join(out)
    try:
        value, end = _LOOSE.raw_decode(joined)
    except json.JSONDecodeError as exc:
        raise ValueParseError(f"malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueParseError("nested too deeply") from None
    if end != len(joined):
        raise ValueParseError("malformed JSON (more than one value, or a missing comma)")
    if not notes:
        notes.append("raw control characters inside strings")
    return value, notes
