"""Prompt templates: `{filename}`, `{stem}`, `{folder}`, `{id}`, `{meta.COLUMN}`, `{stages.NAME}`, `{stages.NAME.FIELD}`.

A template is parsed once (unknown variables fail before any model loads) and rendered per item from a context of
the item's names, its metadata columns and the outputs of the stages it reads. `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import ConfigError

ITEM_VARIABLES = ("filename", "stem", "folder", "id")
_FIELD = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class MissingValue(Exception):
    """A variable has no value for this item (a missing metadata column, a stage that failed for it)."""

    def __init__(self, variable: str, detail: str = ""):
        self.variable, self.detail = variable, detail
        super().__init__(f"{{{variable}}}: {detail}" if detail else f"{{{variable}}}")


@dataclass(frozen=True)
class Variable:
    text: str  # as written, without braces
    kind: str  # item | meta | stage | local
    name: str = ""  # the column, stage or item variable
    path: tuple[str, ...] = ()  # a structured field under a stage


@dataclass
class Template:
    source: str
    pieces: list[str | Variable] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, where: str, local: tuple[str, ...] = ()) -> Template:
        """Parse `text`; ConfigError naming `where` (stage and field) for a malformed or unknown variable.

        `local`: extra plain names allowed here (a prompt set's `{length}` and `{extra}`)."""
        if not isinstance(text, str):
            raise ConfigError(f"{where}: a template must be text; got {type(text).__name__}")
        pieces: list[str | Variable] = []
        escaped = text.replace("{{", "\x00").replace("}}", "\x01")
        pos = 0
        for match in _FIELD.finditer(escaped):
            pieces.append(_unescape(escaped[pos : match.start()]))
            pieces.append(_variable(match.group(1).strip(), where, local))
            pos = match.end()
        rest = escaped[pos:]
        if "{" in rest or "}" in rest:
            raise ConfigError(f"{where}: unbalanced brace in template {text!r} (write {{{{ or }}}} for a literal one)")
        pieces.append(_unescape(rest))
        return cls(text, [p for p in pieces if p != ""])

    @property
    def variables(self) -> list[Variable]:
        return [p for p in self.pieces if isinstance(p, Variable)]

    def stages(self) -> list[str]:
        """The stages this template reads, in order of first use."""
        return list(dict.fromkeys(v.name for v in self.variables if v.kind == "stage"))

    def render(self, context: dict[str, Any]) -> str:
        """Fill in every variable from `context` (see `item_context`); MissingValue when one has no value."""
        out = []
        for piece in self.pieces:
            out.append(piece if isinstance(piece, str) else _value(piece, context))
        return "".join(out)


def _unescape(text: str) -> str:
    return text.replace("\x00", "{").replace("\x01", "}")


def _variable(text: str, where: str, local: tuple[str, ...]) -> Variable:
    parts = text.split(".")
    if len(parts) == 1 and (text in ITEM_VARIABLES or text in local):
        return Variable(text, "local" if text in local else "item", text)
    if parts[0] == "meta" and len(parts) == 2 and parts[1]:
        return Variable(text, "meta", parts[1])
    if parts[0] == "stages" and len(parts) >= 2 and all(_NAME.match(p) for p in parts[1:]):
        return Variable(text, "stage", parts[1], tuple(parts[2:]))
    known = ", ".join([*(f"{{{n}}}" for n in (*ITEM_VARIABLES, *local)), "{meta.COLUMN}", "{stages.NAME[.FIELD]}"])
    raise ConfigError(f"{where}: unknown template variable {{{text}}}; known: {known}")


def _value(var: Variable, context: dict[str, Any]) -> str:
    if var.kind in ("item", "local"):
        value = context.get(var.name)
        if value is None:
            raise MissingValue(var.text, "no value")
        return str(value)
    if var.kind == "meta":
        meta = context.get("meta") or {}
        if var.name not in meta or meta[var.name] is None:
            raise MissingValue(var.text, f"no metadata column {var.name!r} for this item")
        return as_text(meta[var.name])
    output = (context.get("stages") or {}).get(var.name)
    if output is None:
        raise MissingValue(var.text, f"stage {var.name!r} has no output for this item")
    if output.get("status") not in ("ok", "repaired"):
        reason = output.get("error") or output.get("status")
        raise MissingValue(var.text, f"stage {var.name!r} failed for this item ({reason})")
    if not var.path:
        if output.get("caption") is None:
            raise MissingValue(var.text, f"stage {var.name!r} has no caption for this item")
        return str(output["caption"])
    node: Any = _fields(output, var.path[0])
    for key in var.path:
        if not isinstance(node, dict) or key not in node:
            raise MissingValue(var.text, f"stage {var.name!r} output has no field {'.'.join(var.path)!r}")
        node = node[key]
    return as_text(node)


def _fields(output: dict[str, Any], name: str) -> dict[str, Any]:
    """Where `{stages.NAME.FIELD}` is looked up: a tagger's tags (`tags`, `rating`, `characters`, `general`), the
    stage's result (`caption`, `status`, ...), else its structured output."""
    from capmill.taggers.wd import TAG_FIELDS, tag_fields

    if name in TAG_FIELDS and isinstance(output.get("tags"), dict):
        return tag_fields(output["tags"])
    if name in output and name != "structured":
        return output
    return output.get("structured") or {}


def as_text(value: Any) -> str:
    """A metadata or structured value as prompt text: lists comma-joined (subjects by name), objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_item_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _item_text(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        attributes = " ".join(a for a in value.get("attributes") or [] if isinstance(a, str) and a)
        return f"{attributes} {value['name']}".strip()
    return as_text(value)


def item_context(item_id: str, source: str, meta: dict[str, Any], stages: dict[str, Any]) -> dict[str, Any]:
    """The template context of one item: its names (from its source path, else its id), metadata, stage outputs."""
    path = source if source and not source.startswith("<") else item_id
    path = path.split("#", 1)[0] if "://" not in path else path.rsplit("/", 1)[-1].split("?", 1)[0]
    filename = os.path.basename(path.rstrip("/")) or item_id
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))) if "/" in path or os.sep in path else ""
    return {
        "id": item_id,
        "filename": filename,
        "stem": os.path.splitext(filename)[0],
        "folder": folder,
        "meta": meta,
        "stages": stages,
    }
