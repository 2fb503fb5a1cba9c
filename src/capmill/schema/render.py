"""Write a caption as the Qwen3.5 chat template writes an assistant's `emit_caption_schema` call.

One writer for training data, golden prompts and the round-trip test. The template emits each argument as
`<parameter=KEY>\\nVALUE\\n</parameter>\\n`, VALUE being `tojson` for lists and mappings (transformers' tojson:
`json.dumps(value, ensure_ascii=False)`) and `value | string` otherwise (so None becomes "None").
"""

from __future__ import annotations

import json
from typing import Any

from capmill.schema.caption import StructuredCaption
from capmill.schema.tool import TOOL_NAME


def tool_arguments(caption: StructuredCaption, include_nulls: bool = False) -> dict[str, Any]:
    """The call's arguments as the training data holds them: subjects, actions, setting (style/mood omitted)."""
    args: dict[str, Any] = {
        "subjects": [{"name": s.name, "attributes": list(s.attributes)} for s in caption.subjects],
        "actions": list(caption.actions),
        "setting": caption.setting,
    }
    if include_nulls:
        args["style"] = caption.style
        args["mood"] = caption.mood
    return args


def _template_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # jinja's `| string`: None -> "None", True -> "True"


def render_arguments(name: str, arguments: dict[str, Any]) -> str:
    """Any call in the template's shape, arguments in their dict order."""
    parts = [f"<tool_call>\n<function={name}>\n"]
    for key, value in arguments.items():
        parts.append(f"<parameter={key}>\n{_template_value(value)}\n</parameter>\n")
    parts.append("</function>\n</tool_call>")
    return "".join(parts)


def render_tool_call(caption: StructuredCaption, include_nulls: bool = False) -> str:
    """`caption` as the assistant's tool call text (no surrounding chat markup)."""
    return render_arguments(TOOL_NAME, tool_arguments(caption, include_nulls))
