"""The structured caption: pydantic models, JSON Schema and tool, the tool-call parser, renderer and grounding.

Light on purpose (pydantic and the standard library only): every engine and sink imports it.
"""

from capmill.schema.caption import MAX_ITEMS, MAX_NAME, SETTINGS, StructuredCaption, SubjectValue
from capmill.schema.grounding import GroundedItem, GroundingReport, ground
from capmill.schema.parse import ParseResult, parse_tool_call
from capmill.schema.render import render_arguments, render_tool_call, tool_arguments
from capmill.schema.tool import CAPTION_JSON_SCHEMA, EMIT_CAPTION_TOOL, TOOL_NAME, caption_tools

__all__ = [
    "CAPTION_JSON_SCHEMA",
    "EMIT_CAPTION_TOOL",
    "MAX_ITEMS",
    "MAX_NAME",
    "SETTINGS",
    "TOOL_NAME",
    "GroundedItem",
    "GroundingReport",
    "ParseResult",
    "StructuredCaption",
    "SubjectValue",
    "caption_tools",
    "ground",
    "parse_tool_call",
    "render_arguments",
    "render_tool_call",
    "tool_arguments",
]
