"""Training examples from chat-format JSONL (the json-coco-format shape) and from image-caption pairs.

A bad row never ends a run: it becomes a ``Reject`` (source and reason) that the trainer writes to the run
folder, and the rest trains. A file that cannot be read at all, or a stage left with no rows, is a config error.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IMAGE_KEYS = ("image", "file", "path", "image_path", "file_name")
CAPTION_KEYS = ("caption", "text", "captions")


@dataclass
class Example:
    """One conversation to learn from: chat messages (user images as paths) and optional tools."""

    messages: list[dict[str, Any]]
    source: str
    tools: list[dict[str, Any]] | None = None
    images: list[str] = field(default_factory=list)  # in the order they appear in the messages

    @property
    def prompt_and_target(self) -> tuple[str, str]:
        """(last user text, last assistant text), for models without a chat template (BLIP-2)."""
        user = next(m for m in reversed(self.messages) if m["role"] == "user")
        assistant = self.messages[-1]
        return _text_of(user.get("content")), _text_of(assistant.get("content"))


@dataclass
class Reject:
    source: str
    reason: str


class RowError(ValueError):
    """A row cannot become an example; the message is the reason recorded in rejects.jsonl."""


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and "text" in part)


def _json_field(value: Any, name: str) -> Any:
    """The dataset declares messages/tools as a 'Json' feature, so they may arrive as JSON strings."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(f"{name} is a string that is not JSON ({exc.msg})") from None
    return value


def _render_tool_calls(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message with ``tool_calls``: emit_caption_schema calls become the exact Qwen3.5 tool-call
    text written by capmill.schema.render_tool_call (validated first); other calls get dict arguments for the
    chat template to render."""
    from capmill.schema import TOOL_NAME, StructuredCaption, render_arguments, render_tool_call

    calls = message.get("tool_calls") or []
    texts, passthrough = [], []
    for call in calls:
        fn = call.get("function", call)
        name = fn.get("name")
        args = _json_field(fn.get("arguments", {}), "tool call arguments")
        if not isinstance(args, dict):
            raise RowError(f"tool call {name!r}: arguments are not an object")
        if name == TOOL_NAME:
            try:
                caption = StructuredCaption.model_validate(args)
            except ValueError as exc:
                raise RowError(
                    f"{TOOL_NAME} arguments do not fit the caption schema: {str(exc).splitlines()[0]}"
                ) from None
            texts.append(render_tool_call(caption))
        else:
            passthrough.append({"type": "function", "function": {"name": name, "arguments": args}})
    if passthrough and texts:  # keep one writer for one message: render the others the same way
        texts += [render_arguments(c["function"]["name"], c["function"]["arguments"]) for c in passthrough]
        passthrough = []
    content = _text_of(message.get("content"))
    if texts:
        body = "\n".join(texts)
        content = f"{content.strip()}\n\n{body}" if content.strip() else body
    out = {"role": "assistant", "content": content}
    if passthrough:
        out["tool_calls"] = passthrough
    return out


def _resolve_media(content: Any, base_dir: Path, images: list[str]) -> Any:
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if not isinstance(part, dict):
            raise RowError("message content items must be objects")
        kind = part.get("type")
        if kind in ("image", "image_url") or "image" in part:
            ref = part.get("image") or part.get("url") or (part.get("image_url") or {}).get("url")
            if not isinstance(ref, str):
                raise RowError("image content without a path")
            path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
            if not path.is_file():
                raise RowError(f"image {ref} not found")
            images.append(str(path))
            parts.append({"type": "image", "image": str(path)})
        elif kind == "text" or "text" in part:
            parts.append({"type": "text", "text": part.get("text", "")})
        else:
            raise RowError(f"unsupported content item type {kind!r}")
    return parts


def chat_example(row: dict[str, Any], source: str, base_dir: Path) -> Example:
    """A row with ``messages`` (system, user, assistant with content or ``tool_calls``) and optional ``tools``."""
    messages = _json_field(row.get("messages"), "messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("no messages")
    tools = _json_field(row.get("tools"), "tools") or None
    if tools is not None and not isinstance(tools, list):
        raise RowError("tools must be a list")
    out, images = [], []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise RowError(f"bad message {str(m)[:60]!r}")
        if m["role"] == "assistant" and m.get("tool_calls"):
            out.append(_render_tool_calls(m))
        else:
            out.append({"role": m["role"], "content": _resolve_media(m.get("content"), base_dir, images)})
    if out[-1]["role"] != "assistant" or not _text_of(out[-1]["content"]).strip() and not out[-1].get("tool_calls"):
        raise RowError("the conversation does not end with a non-empty assistant turn")
    return Example(messages=out, source=source, tools=tools, images=images)


def pair_examples(
    row: dict[str, Any], source: str, base_dir: Path, prompt: str, system_prompt: str | None, tools: list | None
) -> list[Example]:
    """An image and its caption(s): one example per caption, answering ``prompt`` about the image."""
    ref = next((row[k] for k in IMAGE_KEYS if isinstance(row.get(k), str) and row[k]), None)
    if ref is None:
        raise RowError(f"no image column (one of {', '.join(IMAGE_KEYS)})")
    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if not path.is_file():
        raise RowError(f"image {ref} not found")
    value = next((row[k] for k in CAPTION_KEYS if row.get(k)), None)
    captions = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise RowError(f"no caption column (one of {', '.join(CAPTION_KEYS)})")
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = {"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": prompt}]}
    return [
        Example(
            messages=[*head, user, {"role": "assistant", "content": c}],
            source=f"{source}#{i}" if len(captions) > 1 else source,
            tools=tools,
            images=[str(path)],
        )
        for i, c in enumerate(captions)
    ]


def _rows(path: Path):
    """(source, row) from JSONL, JSON (a list), CSV/TSV, or a folder of images with .txt caption sidecars."""
    if path.is_dir():
        for img in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            side = img.with_suffix(".txt")
            yield str(img), {"image": str(img), "caption": side.read_text(encoding="utf-8") if side.exists() else ""}
        return
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), start=2):
                yield f"{path}:{i}", row
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for i, row in enumerate(data if isinstance(data, list) else [data]):
            yield f"{path}[{i}]", row
    else:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{i}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path}:{i}", RowError(f"not JSON ({exc.msg})")


def load_examples(
    paths: list[str],
    *,
    format: str = "auto",
    where: dict[str, Any] | None = None,
    limit: int | None = None,
    prompt: str = "Describe this image.",
    system_prompt: str | None = None,
    tools: list | None = None,
) -> tuple[list[Example], list[Reject]]:
    """Examples and rejects from every path; ``where`` keeps rows whose fields equal the given values."""
    examples: list[Example] = []
    rejects: list[Reject] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"training data {path} does not exist")
        base_dir = path if path.is_dir() else path.parent
        for source, row in _rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise RowError("row is not an object")
                if where and any(row.get(k) != v for k, v in where.items()):
                    continue
                kind = format if format != "auto" else ("chat" if "messages" in row else "pairs")
                if kind == "chat":
                    examples.append(chat_example(row, source, base_dir))
                else:
                    examples.extend(pair_examples(row, source, base_dir, prompt, system_prompt, tools))
            except RowError as exc:
                rejects.append(Reject(source, str(exc)))
            if limit is not None and len(examples) >= limit:
                return examples[:limit], rejects
    return examples, rejects
