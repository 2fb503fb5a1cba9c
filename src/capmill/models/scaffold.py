"""The JSON captioner's task scaffold: the system prompt and tools its LoRA was trained against.

They are not in the weights: they live in the dataset AbstractPhil/json-coco-format (data/task_1.jsonl, first
row). `--scaffold PATH` reads a file; otherwise the row is downloaded with huggingface_hub, as the card does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.errors import ScaffoldError
from capmill.records import stable_hash

SCAFFOLD_REPO = "AbstractPhil/json-coco-format"
SCAFFOLD_FILE = "data/task_1.jsonl"


@dataclass(frozen=True)
class Scaffold:
    system_prompt: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    origin: str = ""

    @property
    def hash(self) -> str:
        return stable_hash({"system": self.system_prompt, "tools": self.tools})


def _first_json_value(text: str, origin: str) -> dict[str, Any]:
    stripped = text.lstrip()
    try:
        if stripped.startswith("{") and "\n{" not in stripped.rstrip():
            value = json.loads(stripped)
        else:
            value = json.loads(stripped.splitlines()[0])  # JSON lines: the card reads the first row
    except (json.JSONDecodeError, IndexError) as exc:
        raise ScaffoldError(f"scaffold {origin}: not JSON or JSON lines ({exc})") from exc
    if not isinstance(value, dict):
        raise ScaffoldError(f"scaffold {origin}: expected a JSON object, got {type(value).__name__}")
    return value


def scaffold_from_row(row: dict[str, Any], origin: str) -> Scaffold:
    """A dataset row ({"messages": [...], "tools": [...]}) or {"system_prompt": ..., "tools": ...}."""
    if "messages" in row:
        messages = row["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        if not messages or messages[0].get("role") != "system":
            raise ScaffoldError(f"scaffold {origin}: messages[0] is not a system message")
        system = messages[0].get("content")
    else:
        system = row.get("system_prompt")
    if not isinstance(system, str) or not system.strip():
        raise ScaffoldError(f"scaffold {origin}: no system prompt (messages[0].content or system_prompt)")
    tools = row.get("tools")
    if isinstance(tools, str):  # the dataset declares a 'Json' feature: accept a JSON string too
        tools = json.loads(tools)
    if not tools:
        from capmill.schema import EMIT_CAPTION_TOOL  # the card's tool, when the file carries only the prompt

        tools = [EMIT_CAPTION_TOOL]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ScaffoldError(f"scaffold {origin}: tools must be a list of tool definitions")
    return Scaffold(system_prompt=system, tools=tools, origin=origin)


def load_scaffold(path: str | Path | None = None) -> Scaffold:
    """From `path` when given, else the card's download; a ScaffoldError says what to pass when neither works."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ScaffoldError(f"scaffold file {p} does not exist")
        return scaffold_from_row(_first_json_value(p.read_text(encoding="utf-8"), str(p)), str(p))
    try:
        from capmill.models.hub import hub_file

        local = hub_file(SCAFFOLD_REPO, SCAFFOLD_FILE, repo_type="dataset")
    except Exception as exc:
        raise ScaffoldError(
            f"the json-captioner needs its task scaffold (system prompt + tools) from the dataset {SCAFFOLD_REPO} "
            f"({SCAFFOLD_FILE}), which is not in the local cache and could not be downloaded ({type(exc).__name__}). Pass --scaffold PATH "
            f"(Python: scaffold=PATH) with a copy of that file's first line, or a JSON file "
            f'{{"system_prompt": "...", "tools": [...]}}'
        ) from exc
    with open(local, encoding="utf-8") as f:
        first = f.readline()
    return scaffold_from_row(_first_json_value(first, f"{SCAFFOLD_REPO}/{SCAFFOLD_FILE}"), f"hub:{SCAFFOLD_REPO}")
