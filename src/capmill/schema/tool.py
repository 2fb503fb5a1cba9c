"""The JSON Schema of the structured caption and the `emit_caption_schema` tool, exactly as in the json-captioner card.

Written out literally (not generated at import) so importing is cheap and any drift from the card shows
in review; tests/schema/test_golden.py checks both against the card's tool JSON and against the pydantic model.
"""

from __future__ import annotations

import copy
from typing import Any

TOOL_NAME = "emit_caption_schema"
TOOL_DESCRIPTION = (
    "Emit the structured caption representation. The parameters follow the qwen-test-runner slot registry."
)

_NULLABLE_SHORT: list[dict[str, Any]] = [{"maxLength": 64, "type": "string"}, {"type": "null"}]

CAPTION_JSON_SCHEMA: dict[str, Any] = {
    "$defs": {
        "SubjectValue": {
            "description": "A single entity in the caption.",
            "properties": {
                "name": {"maxLength": 64, "minLength": 1, "title": "Name", "type": "string"},
                "attributes": {"items": {"type": "string"}, "maxItems": 8, "title": "Attributes", "type": "array"},
            },
            "required": ["name"],
            "title": "SubjectValue",
            "type": "object",
        }
    },
    "properties": {
        "subjects": {"items": {"$ref": "#/$defs/SubjectValue"}, "maxItems": 8, "title": "Subjects", "type": "array"},
        "actions": {"items": {"type": "string"}, "maxItems": 8, "title": "Actions", "type": "array"},
        "setting": {
            "default": "unknown",
            "enum": ["indoor", "outdoor", "unknown"],
            "title": "Setting",
            "type": "string",
        },
        "style": {"anyOf": copy.deepcopy(_NULLABLE_SHORT), "default": None, "title": "Style", "const": None},
        "mood": {"anyOf": copy.deepcopy(_NULLABLE_SHORT), "default": None, "title": "Mood", "const": None},
    },
    "title": "Caption",
    "type": "object",
}

EMIT_CAPTION_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": CAPTION_JSON_SCHEMA},
}


def caption_tools() -> list[dict[str, Any]]:
    """A fresh copy of the `tools` list to pass to a chat template or an API (callers may mutate it)."""
    return [copy.deepcopy(EMIT_CAPTION_TOOL)]
