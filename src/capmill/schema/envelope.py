"""Find the tool calls in a model's output and decode their arguments, noting every deviation from the format.

Three shapes are read: the Qwen3.5 XML call (`<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>
...</function>\\n</tool_call>`), the Qwen2.5 / Hermes JSON call (`<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`) and a bare JSON object. Values are decoded here; their fit to the schema is normalize.py's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from capmill.schema.lenient_json import ValueParseError, loads_lenient

_DECODER = json.JSONDecoder()
_FUNCTION = re.compile(r"<function=([^>\n]*)>")
_PARAMETER_HEAD = re.compile(r"<parameter=([^>\n]*)>\n?()\s*")
_PARAMETER_TAIL = re.compile(r"\s*(</parameter>)?")
# One step inside a <function=...> call: which tag comes next (groups 1-6), or none (stray text or the end).
_XML_STEP = re.compile(
    r"\s*(?:(<parameter=)|(</function>)\s*(</tool_call>)?|(</tool_call>)|(</parameter>)|(<tool_call>|<function=))?"
)
_CALL_START = re.compile(r"<tool_call>|<function=")
_NEXT_TAG = re.compile(r"</parameter>|<parameter=|</function>|</tool_call>|<tool_call>|<function=")
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?")
_WS = re.compile(r"\s*")
_CLOSERS = ("</parameter>", "</function>", "</tool_call>", "<parameter=", "<tool_call>", "<function=")
NULL_TEXT = frozenset({"None", "null", "", "none", "NULL", "Null"})
LIST_PARAMS = frozenset({"subjects", "actions"})
#: When a call is cut off, it is accepted only if all of these were written in full.
COMPLETE_WHEN_CUT = ("subjects", "actions", "setting")


@dataclass
class Call:
    """One tool call as found: its function name, decoded arguments, and what was wrong with its form."""

    name: str | None
    form: str  # "qwen3_xml" | "hermes_json" | "json"
    args: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    span: tuple[int, int] = (0, 0)  # where the call sits in the text searched


def _preview(value: Any, limit: int = 40) -> str:
    """A short quoted view of a value for a note: strings stripped and repr'd, others repr'd once."""
    text = repr(value.strip()) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def _is_partial_tag(rest: str) -> bool:
    """True when `rest` is the start of a tag the output was cut off inside (`</funct`, `<parameter=sett`)."""
    rest = rest.strip()
    if not rest.startswith("<") or "\n" in rest:
        return False
    return any(tag.startswith(rest) or (rest.startswith(tag) and ">" not in rest) for tag in _CLOSERS)


def _set_arg(call: Call, key: str, value: Any) -> None:
    if key in call.args:
        if call.args[key] == value:
            note = f"parameter {key!r} given more than once with the same value; kept one"
            if note not in call.notes:
                call.notes.append(note)
        else:
            call.refusals.append(
                f"parameter {key!r} given twice with different values ({_preview(call.args[key])} and "
                f"{_preview(value)}); cannot tell which the model meant"
            )
        return
    call.args[key] = value


def _text_value(call: Call, key: str, raw: str) -> Any:
    """A raw-text parameter value: strings are raw in the Qwen3.5 format, a null is None, null or empty."""
    value = raw.strip()
    if value in NULL_TEXT:
        return None
    if key in LIST_PARAMS:
        return value  # normalize.py reads a bare string as a list, with a note
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            unquoted = json.loads(value)
        except ValueError:
            return value
        call.notes.append(f"parameter {key!r} written as a JSON string {value}; strings are raw in this format")
        return unquoted
    return value


def _read_parameter(text: str, pos: int, call: Call) -> tuple[int, bool, str | None]:
    """Read one `<parameter=KEY>` at `pos`; return (position after it, whether its value was complete, KEY)."""
    match = _PARAMETER_HEAD.match(text, pos)
    if match is None:
        call.notes.append("output ends inside a <parameter=...> tag; ignored it")
        return len(text), True, None
    key = match.group(1).strip()
    start = match.start(2)  # after the newline the template writes
    first = match.end()
    complete = True
    if text.startswith(("[", "{"), first):
        try:
            value, end = _DECODER.raw_decode(text, first)
        except (ValueError, RecursionError):
            tag = _NEXT_TAG.search(text, first)
            end = tag.start() if tag else len(text)
            try:
                value, liberties = loads_lenient(text[first:end])
                call.notes.append(f"parameter {key!r}: read leniently ({', '.join(liberties)})")
            except ValueParseError as exc:
                if exc.truncated and tag is None:
                    # Recorded here with its reason; reported as complete so _cut_off does not repeat it.
                    call.refusals.append(f"output cut off inside parameter {key!r} ({exc.reason})")
                    return len(text), True, key
                call.refusals.append(
                    f"parameter {key!r} is not valid JSON: {exc.reason}: {_preview(text[first:end], 60)}"
                )
                if text.startswith("</parameter>", end):
                    end += len("</parameter>")
                return end, True, key
    else:
        tag = _NEXT_TAG.search(text, start)
        end = tag.start() if tag else len(text)
        raw = text[start:end]
        if tag is None and (lt := raw.rfind("<")) >= 0 and _is_partial_tag(raw[lt:]):
            raw = raw[:lt]  # cut off inside the closing tag ("indoor\n</param"): the value itself is whole
        value = _text_value(call, key, raw)
        complete = tag is not None
    _set_arg(call, key, value)
    tail = _PARAMETER_TAIL.match(text, end)  # always matches (it can match the empty string)
    if tail.group(1):  # type: ignore[union-attr]
        return tail.end(), True, key  # type: ignore[union-attr]
    after = tail.end()  # type: ignore[union-attr]
    tag = _NEXT_TAG.match(text, after)
    if tag is None and after < len(text):
        nxt = _NEXT_TAG.search(text, after)
        stop = nxt.start() if nxt else len(text)
        if not (nxt is None and _is_partial_tag(text[after:])):
            call.notes.append(f"ignored text after the value of {key!r}: {_preview(text[after:stop])}")
        after = stop
    if after < len(text):
        call.notes.append(f"parameter {key!r} has no </parameter>")
    return after, complete, key


def _read_xml(text: str, pos: int, call_opened: bool) -> tuple[Call, int]:
    """Read a `<function=NAME>` call at `pos`; return it and the position after it."""
    match = _FUNCTION.match(text, pos)
    if match is None:
        call = Call(None, "qwen3_xml")
        call.refusals.append(f"output cut off inside the <function=...> tag: {_preview(text[pos:])}")
        return call, len(text)
    call = Call(match.group(1).strip(), "qwen3_xml")
    if not call_opened:
        call.notes.append("call has no <tool_call> before <function=...>")
    pos = match.end()
    last_key, last_complete = None, True
    size = len(text)
    while True:
        step = _XML_STEP.match(text, pos)
        kind = step.lastindex  # type: ignore[union-attr]
        if kind == 1:
            pos, last_complete, last_key = _read_parameter(text, step.start(1), call)  # type: ignore[union-attr]
            continue
        pos = step.end()  # type: ignore[union-attr]
        if kind == 2 or kind == 3:
            if kind == 2 and call_opened:
                call.notes.append("call has no </tool_call> after </function>")
            return call, pos
        if kind == 4:
            call.notes.append("call has no </function> before </tool_call>")
            return call, pos
        if kind == 5:
            call.notes.append("ignored a </parameter> that closes no parameter")
        elif kind == 6:
            call.notes.append("call not closed before the next call starts")
            return call, step.start(6)  # type: ignore[union-attr]
        elif pos >= size or (size - pos <= 80 and _is_partial_tag(text[pos:])):
            break
        else:
            nxt = _NEXT_TAG.search(text, pos + 1)
            stop = nxt.start() if nxt else size
            call.notes.append(f"ignored stray text inside the call: {_preview(text[pos:stop])}")
            pos = stop  # always > pos: the loop makes progress
    _cut_off(call, last_key, last_complete)
    return call, len(text)


def _cut_off(call: Call, last_key: str | None, last_complete: bool) -> None:
    """The output ended inside the call: accept it only if every caption field was written in full."""
    call.notes.append("output ends before </function></tool_call> (cut off by the token limit?)")
    if not last_complete and last_key is not None:
        value = call.args.get(last_key)
        if last_key in ("style", "mood"):
            pass  # dropped anyway: const null
        elif (
            last_key == "setting"
            and isinstance(value, str)
            and value.strip().lower() in ("indoor", "outdoor", "unknown")
        ):
            pass  # a whole enum member: nothing of it can be missing
        elif last_key in COMPLETE_WHEN_CUT:
            call.refusals.append(f"output cut off inside parameter {last_key!r} (value {_preview(value)})")
            call.args.pop(last_key, None)
    missing = [key for key in COMPLETE_WHEN_CUT if key not in call.args]
    if missing and not any(r.startswith("output cut off inside") for r in call.refusals):
        call.refusals.append(
            f"output cut off before parameter(s) {', '.join(missing)} were written; the caption would be incomplete"
        )


def _unwrap(obj: Any, call: Call) -> None:
    """Fill `call` from a decoded JSON object: a {"name", "arguments"} wrapper or the caption itself."""
    if not isinstance(obj, dict):
        call.refusals.append(f"expected a JSON object, got {type(obj).__name__}")
        return
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    if "name" in obj and ("arguments" in obj or "parameters" in obj):
        call.name = obj["name"].strip() if isinstance(obj["name"], str) else None
        if "arguments" in obj:
            args = obj["arguments"]
        else:
            call.notes.append("call arguments under 'parameters' instead of 'arguments'")
            args = obj["parameters"]
        if isinstance(args, str):  # the OpenAI wire form: arguments as a JSON string
            try:
                args, liberties = loads_lenient(args)
            except ValueParseError as exc:
                call.refusals.append(f"arguments string is not valid JSON: {exc.reason}")
                return
            if liberties:
                call.notes.append(f"arguments read leniently ({', '.join(liberties)})")
        if not isinstance(args, dict):
            call.refusals.append(f"arguments must be an object, got {type(args).__name__}")
            return
        call.args = args
    else:
        call.args = obj


def _read_json(text: str, pos: int, call: Call, closer: str | None) -> int:
    """Decode the JSON object at `pos` into `call`; return the position after it."""
    try:
        obj, end = _DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        stop = text.find(closer, pos) if closer else -1
        end = stop if stop >= 0 else len(text)
        try:
            obj, liberties = loads_lenient(text[pos:end].rstrip().removesuffix("```"))
        except ValueParseError as exc:
            where = "cut off inside the JSON" if exc.truncated and stop < 0 else "JSON is not valid"
            call.refusals.append(f"{where}: {exc.reason}")
            return end
        call.notes.append(f"JSON read leniently ({', '.join(liberties)})")
    _unwrap(obj, call)
    return end


def _read_hermes(text: str, pos: int) -> tuple[Call, int]:
    call = Call(None, "hermes_json")
    end = _read_json(text, pos, call, "</tool_call>")
    end = _skip_ws(text, end)
    if text.startswith("</tool_call>", end):
        return call, end + len("</tool_call>")
    call.notes.append("call has no </tool_call>")
    return call, end


def find_calls(text: str) -> tuple[list[Call], list[str]]:
    """All tool calls in `text` in order, plus notes about text around them."""
    calls: list[Call] = []
    notes: list[str] = []
    if text.lstrip().startswith(("{", "```")):  # a bare JSON object: tags inside its strings are content
        return _bare_json(text, notes), notes
    pos = 0
    while True:
        match = _CALL_START.search(text, pos)
        if match is None:
            break
        if calls and text[pos : match.start()].strip():
            notes.append(f"ignored text between calls: {_preview(text[pos : match.start()])}")
        if match.group(0) == "<tool_call>":
            inner = _skip_ws(text, match.end())
            if text.startswith("{", inner):
                call, pos = _read_hermes(text, inner)
            elif text.startswith("<function=", inner) or _is_partial_tag(text[inner:]) and inner < len(text):
                call, pos = _read_xml(text, inner, call_opened=True)
            else:
                call = Call(None, "qwen3_xml")
                what = "output ends right after <tool_call>" if inner >= len(text) else "no function inside <tool_call>"
                call.refusals.append(f"{what}: {_preview(text[inner : inner + 60])}")
                pos = inner  # keep scanning: a real call may follow this stray tag
        else:
            call, pos = _read_xml(text, match.start(), call_opened=False)
        call.span = (match.start(), pos)
        calls.append(call)
    if calls:
        rest = text[pos:].strip()
        if rest:
            notes.append(f"ignored text after the tool call: {_preview(rest)}")
        return calls, notes
    return _bare_json(text, notes), notes


def _bare_json(text: str, notes: list[str]) -> list[Call]:
    """A bare JSON object, as constrained-JSON decoding emits; fenced or preceded by prose is noted."""
    start = text.find("{")
    if start < 0:
        return []
    before = text[:start]
    fence = _FENCE.search(before)
    if fence:
        notes.append("JSON inside a markdown code fence")
        before = before[: fence.start()]
    if before.strip():
        if before.strip().endswith("["):
            call = Call(None, "json")
            call.refusals.append("output is a JSON array, not a JSON object or a tool call")
            return [call]
        notes.append(f"ignored text before the JSON object: {_preview(before)}")
    call = Call("", "json")
    end = _read_json(text, start, call, None)
    call.span = (start, end)
    rest = text[end:].strip()
    if fence and rest.startswith("```"):
        rest = rest[3:].strip()
    if rest:
        notes.append(f"ignored text after the JSON object: {_preview(rest)}")
    if call.name == "":
        call.name = None  # a bare caption object: no function name given
    return [call]
