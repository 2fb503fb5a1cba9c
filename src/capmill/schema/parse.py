"""`parse_tool_call`: a model's raw output -> a validated StructuredCaption, repaired with notes, or refused.

Never raises and never drops a caption silently: the result always keeps the raw text, and every repair or
refusal is a line in `.errors`. The clean Qwen3.5 call (what the chat template writes) takes a fast path of
one anchored scan, `json.loads` per list and one `model_validate`; everything else goes through envelope.py
(finding the calls) and normalize.py (fitting the arguments to the schema). Policy: docs/parsing.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from capmill.schema.caption import SETTINGS, StructuredCaption
from capmill.schema.envelope import Call, find_calls
from capmill.schema.normalize import Normalizer
from capmill.schema.tool import TOOL_NAME

if TYPE_CHECKING:
    from capmill.schema.grounding import GroundingReport

ParseStatus = Literal["ok", "repaired", "invalid"]

_json_loads = json.loads
_validate = StructuredCaption.model_validate
_OPEN = f"<tool_call>\n<function={TOOL_NAME}>\n"
_CLOSE = "</function>\n</tool_call>"
_TERMINATORS = ("<|im_end|>", "<|endoftext|>", "</s>")
_NULL_PARAM = ("None", "null", "")
_PARAM_PREFIX = "<parameter="
_PARAM_SEP = "\n</parameter>\n"


@dataclass
class ParseResult:
    """What came out of one raw model output. `errors` holds repair notes and refusal reasons alike."""

    status: ParseStatus
    caption: StructuredCaption | None
    errors: list[str] = field(default_factory=list)
    raw: str = ""
    form: str | None = None  # "qwen3_xml" | "hermes_json" | "json": the shape the call was written in
    grounding: GroundingReport | None = None

    @property
    def ok(self) -> bool:
        """True when there is a caption (status "ok" or "repaired")."""
        return self.caption is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view for records and API responses."""
        return {
            "status": self.status,
            "structured": self.caption.model_dump() if self.caption is not None else None,
            "errors": list(self.errors),
            "form": self.form,
            "grounding": self.grounding.to_dict() if self.grounding is not None else None,
        }


def _strip_end(text: str) -> str:
    text = text.rstrip()
    while text.endswith(_TERMINATORS):
        for token in _TERMINATORS:
            if text.endswith(token):
                text = text[: -len(token)].rstrip()
    return text


def _fast(text: str) -> ParseResult | None:
    """The clean Qwen3.5 call, exactly as the chat template writes it; None sends the text the long way."""
    body_end = len(text) - len(_CLOSE)
    if not text.endswith(_CLOSE):
        return None
    start = text.find(_OPEN)
    if start < 0:
        return None
    if start:
        prefix = text[:start]
        if "<tool_call>" in prefix or "<function=" in prefix or ("<think>" in prefix and "</think>" not in prefix):
            return None
    pos = start + len(_OPEN)
    args: dict[str, Any] = {}
    seen: set[str] = set()
    while pos < body_end:  # structure first: no JSON is decoded for a text that fails here
        if not text.startswith(_PARAM_PREFIX, pos):
            return None
        close = text.find(">\n", pos)
        sep = text.find(_PARAM_SEP, close)
        if close < 0 or sep < 0 or sep + len(_PARAM_SEP) > body_end:
            return None
        key = text[pos + len(_PARAM_PREFIX) : close]
        value = text[close + 2 : sep]
        if key in seen:
            return None
        seen.add(key)
        if key == "subjects" or key == "actions":
            if not value.startswith("["):
                return None
            args[key] = value
        elif key == "setting":
            if value not in SETTINGS:
                return None
            args[key] = value
        elif key != "style" and key != "mood" or value not in _NULL_PARAM:
            return None
        pos = sep + len(_PARAM_SEP)
    if pos != body_end:
        return None
    try:
        for key in ("subjects", "actions"):
            if key in args:
                args[key] = _json_loads(args[key])
    except (ValueError, RecursionError):
        return None
    try:
        caption = _validate(args)
    except ValidationError:
        return None
    return ParseResult("ok", caption, [], text, "qwen3_xml")


def _split_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning): reasoning ends at the first </think>; an unclosed <think> runs to the end.

    A think tag that sits inside a call's values (a subject named "</think>") is content, not a boundary.
    """
    marker = text.find("</think>")
    closed = marker >= 0
    if not closed:
        marker = text.find("<think>")
        if marker < 0:
            return text, ""
    if any(start < marker < end for start, end in (call.span for call in find_calls(text)[0])):
        return text, ""
    if closed:
        return text[marker + len("</think>") :], text[:marker]
    return text[:marker], text[marker:]  # cut off while reasoning: nothing after <think> is an answer


def _evaluate(call: Call) -> tuple[StructuredCaption | None, list[str], list[str]]:
    """(caption, notes, refusals) for one call's arguments."""
    if not call.refusals:
        # Arguments that already fit need no normalising: pydantic (which coerces nothing here: no str->list,
        # no int->str, exact enum) accepting them means normalize.py would change nothing.
        try:
            return _validate(call.args), call.notes, []
        except ValidationError:
            pass
    normalizer = Normalizer()
    clean = normalizer.arguments(call.args)
    notes = call.notes + normalizer.notes
    refusals = call.refusals + normalizer.refusals
    if refusals:
        return None, notes, refusals
    try:
        return _validate(clean), notes, refusals
    except ValidationError as exc:  # normalize.py should have caught it; never let it through unexplained
        details = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        return None, notes, [f"schema validation failed: {'; '.join(details)}"]


def _names(names: list[str]) -> str:
    """Function names once each, with a count when repeated: "web_search, save (x3)"."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    shown = [f"{name} (x{count})" if count > 1 else name for name, count in list(counts.items())[:10]]
    return ", ".join(shown) + (", ..." if len(counts) > 10 else "")


def _invalid(text: str, reasons: list[str], form: str | None = None) -> ParseResult:
    return ParseResult("invalid", None, reasons, text, form)


def _slow(text: str) -> ParseResult:
    body = _strip_end(text)
    if not body.strip():
        return _invalid(text, ["empty output: no tool call"])
    answer, reasoning = _split_reasoning(body)
    calls, notes = find_calls(answer)
    if not calls:
        if reasoning and find_calls(reasoning)[0]:
            return _invalid(text, ["the only tool call is inside the <think> reasoning; no call was emitted after it"])
        return _invalid(text, [f"no tool call or JSON object found in the output: {body.strip()[:60]!r}"])
    chosen: list[Call] = []  # emit_caption_schema calls, and unnamed JSON arguments
    broken: list[Call] = []  # calls cut off or malformed before their function name could be read
    others: list[str] = []
    for call in calls:
        if call.name == TOOL_NAME:
            chosen.append(call)
        elif call.name is None and (call.form == "qwen3_xml" or call.refusals):
            broken.append(call)
        elif call.name is None:
            if call.form == "hermes_json":
                call.notes.append(f"call names no function; read as {TOOL_NAME} arguments")
            chosen.append(call)
        else:
            others.append(call.name)
    if not chosen:
        if broken:
            reasons = [reason for call in broken for reason in call.refusals]
            return _invalid(text, reasons + notes, broken[0].form)
        return _invalid(text, [f"no {TOOL_NAME} call; found call(s) to: {_names(others)}"], calls[0].form)
    if others:
        notes.append(f"ignored call(s) to other functions: {_names(others)}")
    for call in broken:
        notes.append(f"ignored a broken call ({'; '.join(call.refusals)})")
    results = [_evaluate(call) for call in chosen]
    pick = next((i for i, result in enumerate(results) if result[0] is not None), None)
    if pick is None:
        caption_notes, refusals = results[0][1], results[0][2]
        if len(chosen) > 1:
            refusals = refusals + [f"none of the {len(chosen)} {TOOL_NAME} calls is usable"]
        return _invalid(text, refusals + notes + caption_notes, chosen[0].form)
    caption, caption_notes, _ = results[pick]
    if len(chosen) > 1:
        captions = [result[0] for result in results]
        if all(other == caption for other in captions):
            notes.append(f"{len(chosen)} identical {TOOL_NAME} calls; kept one")
        else:
            others_said = [
                f"call {i + 1} {'differs' if other is not None else 'refused: ' + refused[0]}"
                for i, (other, _, refused) in enumerate(results)
                if i != pick and other != caption
            ]
            notes.append(
                f"{len(chosen)} {TOOL_NAME} calls; used call {pick + 1}, the first valid one ({'; '.join(others_said)})"
            )
    errors = caption_notes + notes
    return ParseResult("repaired" if errors else "ok", caption, errors, text, chosen[pick].form)


def parse_tool_call(text: Any, source_text: str | None = None, repair: bool = True) -> ParseResult:
    """Parse one raw model output into a ParseResult; never raises.

    `repair=False` reports instead of repairing: anything that would have been repaired is "invalid", with the
    problems listed. With `source_text`, the result also carries a grounding report against it.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _invalid(repr(text[:200]), [f"output is not UTF-8 text: {exc}"])
    if not isinstance(text, str):
        return _invalid(repr(text), [f"expected the output as str, got {type(text).__name__}"])
    try:
        result = _fast(text.rstrip()) or _slow(text)
        result.raw = text
    except Exception as exc:  # a parser bug must become a record, not end a run
        result = _invalid(text, [f"internal parser error ({type(exc).__name__}: {exc}); please report it"])
    if not repair and result.status == "repaired":
        problems = [f"needs repair (repair=False): {note}" for note in result.errors]
        result = ParseResult("invalid", None, problems, text, result.form)
    if source_text is not None and result.caption is not None:
        from capmill.schema.grounding import ground

        result.grounding = ground(result.caption, source_text)
    return result
