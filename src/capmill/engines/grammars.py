"""Grammars for constrained decoding: a Request's `constraint` dict -> an llguidance grammar string.

Three kinds of constraint, one key each:
- ``{"json_schema": {...}}``: one line of compact JSON (``", "`` and ``": "`` separators, as ``json.dumps`` and
  the chat templates' ``tojson`` write it) valid for the schema;
- ``{"tool_call": tool}``: a Qwen3.5-native tool call of that tool (``<tool_call>\\n<function=NAME>\\n<parameter=
  KEY>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>``) whose values follow the tool's parameter schema;
- ``{"grammar": "..."}``: a Lark (llguidance dialect) or GBNF grammar, used as given.

Strings never hold control characters: JSON escapes are limited to ``\\"`` and ``\\\\`` and string schemas
without a pattern of their own get one that refuses C0/C1 controls and the Unicode line separators (a bare
``\\u0085`` in a caption breaks line-based tools downstream). Only pure functions here; no torch.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from capmill.errors import ConfigError

# Characters no generated string may hold: C0 and C1 controls, DEL, and the Unicode line/paragraph separators.
_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
NO_CONTROL_PATTERN = f"^[^{_CONTROL_CLASS}]*$"
# Layout of generated JSON: one line, the separators of json.dumps, only the escapes a caption needs.
JSON_LAYOUT = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allowed_escapes": '"\\',
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
KINDS = ("json_schema", "tool_call", "grammar")


def grammar_for(constraint: dict[str, Any], special_tokens: frozenset[str] = frozenset()) -> str:
    """The llguidance grammar for one constraint dict; ConfigError names the problem when it is malformed.

    ``special_tokens``: added tokens of the tokenizer (llguidance sees every added token as special, so a
    marker like ``<tool_call>`` that is one token must be named as a token, not spelled as text).
    """
    if not isinstance(constraint, dict) or len(constraint) != 1 or next(iter(constraint)) not in KINDS:
        raise ConfigError(f"constraint must be a dict with exactly one of {KINDS}; got {_short(constraint)}")
    kind, value = next(iter(constraint.items()))
    if kind == "json_schema":
        return json_schema_grammar(value)
    if kind == "tool_call":
        return tool_call_grammar(value, special_tokens)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("constraint 'grammar' must be a non-empty Lark or GBNF grammar string")
    import llguidance

    try:
        return llguidance.grammar_from("grammar", value)
    except ValueError as exc:
        raise ConfigError(f"constraint 'grammar' is not a valid Lark or GBNF grammar: {exc}") from exc


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """Compact one-line JSON for ``schema``, strings free of control characters."""
    import llguidance

    if not isinstance(schema, dict):
        raise ConfigError(f"constraint 'json_schema' must be a JSON Schema object; got {_short(schema)}")
    return llguidance.LLMatcher.grammar_from_json_schema(compact_schema(schema))


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with the one-line layout, control-free strings and closed objects (see _tighten)."""
    out = _tighten(copy.deepcopy(schema))
    layout = dict(JSON_LAYOUT)
    layout.update(out.get("x-guidance") or {})  # a schema's own layout wins
    out["x-guidance"] = layout
    return out


def tool_call_grammar(tool: dict[str, Any], special_tokens: frozenset[str] = frozenset()) -> str:
    """A Lark grammar for one Qwen3.5-native call of ``tool`` (an OpenAI-style tool or its ``function`` part).

    Every parameter whose schema admits a value other than null is written, in the schema's order; parameters
    pinned to null (the captioner's ``style`` and ``mood``) are left out, which means null. Arrays, objects,
    numbers and booleans are one line of compact JSON; strings are raw text on one line (an enum: one of its
    values), with no leading or trailing blank, as the Qwen3.5 chat template renders them. ``<tool_call>`` and
    ``</tool_call>`` are matched as the single tokens Qwen has for them when they are in ``special_tokens``.
    """
    import llguidance

    function = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConfigError(f"constraint 'tool_call' must be a tool definition with a function name; got {_short(tool)}")
    name = function["name"]
    params = function.get("parameters") or {"type": "object", "properties": {}}
    props = params.get("properties") or {}
    defs = {k: params[k] for k in ("$defs", "definitions") if k in params}
    for key in (name, *props):
        if not _NAME.match(key):
            raise ConfigError(f"tool {name!r}: name {key!r} cannot appear in a Qwen tool call (letters, digits, _.-)")
    rules: list[str] = []
    parts: list[str] = []
    for i, (key, sub) in enumerate(props.items()):
        sub = _resolve(sub, params)
        if _only_null(sub):
            continue  # pinned to null: the parameter is left out, which reads as null
        value = _value_rule(f"v_{i}", sub, defs, rules)
        rules.append(f"p_{i}: " + _lit(f"<parameter={key}>\n") + f" {value} " + _lit("\n</parameter>\n"))
        parts.append(f"p_{i}")
    open_, close = (
        ("<tool_call> ", " </tool_call>")
        if {"<tool_call>", "</tool_call>"} <= special_tokens
        else ('"<tool_call>" ', ' "</tool_call>"')
    )
    head = open_ + _lit(f"\n<function={name}>\n")
    tail = _lit("</function>\n") + close
    lines = [f"start: {head} {' '.join(parts)} {tail}"]
    grammar = "\n".join(lines + rules) + "\n"
    return llguidance.LLMatcher.grammar_from_lark(grammar)


def _value_rule(rule: str, sub: dict[str, Any], defs: dict[str, Any], rules: list[str]) -> str:
    """Name of a rule (or terminal) matching one parameter value; appends its definition to ``rules``."""
    enum = _string_enum(sub)
    if enum is not None:
        rules.append(f"{rule}: " + " | ".join(_lit(v) for v in enum))
        return rule
    if _types(sub) == {"string"}:
        lo = int(sub.get("minLength", 1))
        hi = sub.get("maxLength")
        edge = f"[^\\s{_CONTROL_CLASS}]"
        body = f"/{edge}([^{_CONTROL_CLASS}]*{edge})?/"
        if lo > 1 or hi is not None:
            upper = "" if hi is None else str(int(hi))
            body += f" & /(?s:.){{{max(lo, 1)},{upper}}}/"
        if sub.get("pattern"):
            raise ConfigError(f"tool parameter pattern {sub['pattern']!r}: raw-string patterns are not supported")
        terminal = rule.upper()
        rules.append(f"{terminal}: {body}")
        return terminal
    schema = compact_schema({**sub, **defs})
    rules.append(f"{rule}: %json {json.dumps(schema, ensure_ascii=False)}")
    return rule


def _tighten(node: Any) -> Any:
    """In place: free strings (no pattern, format, enum or const) get the no-control pattern, and objects that
    list their properties are closed unless they say otherwise (as OpenAI's and vLLM's strict modes do), so
    an output never carries keys a strict validator like StructuredCaption refuses."""
    if isinstance(node, dict):
        for value in node.values():
            _tighten(value)
        if "string" in _types(node) and not any(k in node for k in ("pattern", "format", "enum", "const")):
            node["pattern"] = NO_CONTROL_PATTERN
        if "properties" in node and "additionalProperties" not in node and "patternProperties" not in node:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for value in node:
            _tighten(value)
    return node


def _types(sub: dict[str, Any]) -> set[str]:
    t = sub.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return set(t)
    return set()


def _string_enum(sub: dict[str, Any]) -> list[str] | None:
    values = sub.get("enum")
    if "const" in sub and sub["const"] is not None:
        values = [sub["const"]]
    if values and all(isinstance(v, str) for v in values):
        return list(values)
    return None


def _only_null(sub: dict[str, Any]) -> bool:
    if "const" in sub and sub["const"] is None:
        return True
    if sub.get("enum") == [None]:
        return True
    return _types(sub) == {"null"}


def _resolve(sub: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow one local ``$ref`` (``#/$defs/X``) so a parameter's own type can be seen."""
    ref = sub.get("$ref") if isinstance(sub, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return {**node, **{k: v for k, v in sub.items() if k != "$ref"}}
    return sub


def _lit(text: str) -> str:
    """A Lark string literal for ``text`` (JSON escapes are valid Lark escapes)."""
    return json.dumps(text, ensure_ascii=False)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- text forms: vocabulary and form constraints on free text (captions, tag lists) ----------------------------
# Markers on the first lines of a text-form grammar, read by the transformers engine (constrained.py): a text form
# needs only a few tokens to close (a sentence end, the end of a tag); one whose every state past its prefix is a
# fine place for the token budget to cut (banned and required words only) is never steered to close early.
TEXT_FORM = "// capmill: text-form"
CUT_ANYWHERE = "// capmill: cut-anywhere"
# The last line of a tag-list grammar: its prefix and vocabulary as JSON, for the engines' no-repeat check while
# decoding (capmill.engines.tag_dedupe).
UNIQUE_TAGS = "// capmill: unique-tags "
# What may stand beside a banned or required word: whitespace or ASCII punctuation (a small class: Unicode letter
# classes make the intersected regexes too large for the lexer; a letter like "é" after "cat" is not an edge).
_WORD_EDGE = r"[\s!-\/:-@\[-`{-~]"
_SENTENCE_END = r"(?s:.*)[.!?][\"'\u201d\u2019)\]]*"
_REGEX_META = set('\\.+*?()|[]{}^$#&-~/"')


def text_form_grammar(
    *,
    prefix: str = "",
    banned: tuple[str, ...] | list[str] = (),
    required: tuple[str, ...] | list[str] = (),
    tags: tuple[str, ...] | list[str] | None = None,
    max_tags: int | None = None,
    max_words: int | None = None,
    sentence_end: bool = False,
) -> str:
    """A Lark grammar holding free text to a form, for the ``{"grammar": ...}`` constraint of any engine.

    ``prefix``: the output starts with this text (a trigger word). ``banned``: words or phrases that never appear
    (whole words, any case, any spacing between a phrase's words). ``required``: words that must appear before
    the output may end. ``tags``: the body is a comma-separated list (``", "``) of tags from this list, at most
    ``max_tags`` of them, none twice (refused while decoding by the engines that read the grammar's last line, see
    below). ``max_words``: at most that many
    words, ending at a sentence end; ``sentence_end``: the output ends with a full stop, question or exclamation mark (so a token budget ends at
    a sentence boundary). ConfigError names a malformed setting.
    """
    parts: list[str] = []
    if tags is not None:
        tags = [str(t) for t in tags]
        if not tags:
            raise ConfigError("tags: the vocabulary is empty")
        for tag in tags:
            if not tag.strip() or "," in tag or tag != tag.strip():
                raise ConfigError(f"tags: {tag!r} is not a usable tag (no commas, no blank at either end)")
        if max_tags is not None and max_tags < 1:
            raise ConfigError(f"max_tags must be at least 1; got {max_tags}")
        alt = "(" + "|".join(_rx(t) for t in sorted(set(tags), key=len, reverse=True)) + ")"
        most = len(set(tags)) if max_tags is None else min(max_tags, len(set(tags)))
        parts.append(f"/{alt}(, {alt}){{0,{most - 1}}}/")
        # Repeats are not refused here: "no tag twice" for K tags is an intersection of K negated regexes whose
        # derivatives exhaust llguidance's lexer already at 8 real tags. The engines refuse them beside the
        # grammar (tag_dedupe.py), reading the vocabulary from the grammar's last line.
    elif max_words is not None:
        if max_words < 1:
            raise ConfigError(f"max_words must be at least 1; got {max_words}")
        parts.append(rf"/\s*\S+(\s+\S+){{0,{max_words - 1}}}/")
    else:
        parts.append("/(?s:.*)/")
    if (max_words is not None or sentence_end) and tags is None:
        parts.append(f"/{_SENTENCE_END}/")
    if banned:  # one negated alternation, not one term per word: the lexer's work grows with the terms
        words = "|".join(_phrase(word, "banned") for word in banned)
        parts.append(f"~/(?s:(.*{_WORD_EDGE})?)(?i:{words})({_WORD_EDGE}(?s:.*))?/")
    for word in required:
        parts.append(f"/(?s:(.*{_WORD_EDGE})?)(?i:{_phrase(word, 'required')})({_WORD_EDGE}(?s:.*))?/")
    head = f"{json.dumps(prefix, ensure_ascii=False)} " if prefix else ""
    cut_anywhere = tags is None and max_words is None and not sentence_end
    lines = [TEXT_FORM, CUT_ANYWHERE] if cut_anywhere else [TEXT_FORM]
    lines += [f"start: {head}BODY", "BODY: " + " & ".join(parts)]
    if tags is not None:
        lines.append(
            UNIQUE_TAGS + json.dumps({"prefix": prefix, "tags": list(dict.fromkeys(tags))}, ensure_ascii=False)
        )
    return "\n".join(lines) + "\n"


def _phrase(text: str, field: str) -> str:
    words = str(text).split()
    if not words:
        raise ConfigError(f"{field}: an empty word")
    return r"\s+".join(_rx(w) for w in words)


def _rx(text: str) -> str:
    """``text`` as a literal inside a Lark ``/regex/`` (Rust regex syntax)."""
    return "".join(f"\\{c}" if c in _REGEX_META else c for c in text)
