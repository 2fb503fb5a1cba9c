"""capmill Requests <-> the OpenAI chat wire format, both ways, in one place.

capmill -> OpenAI: media as data URIs, tools, constraints, decoding, tool calls back to text (the OpenAI-compatible
HTTP engine and the vLLM engine, whose `LLM.chat` takes the same shape). OpenAI -> capmill: chat messages to
turns and Hugging Face messages, request fields to a Decoding (the server).

Images are PNG by default: lossless, so a server decodes exactly the pixels the transformers engine sees.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

from capmill.errors import UnsupportedError
from capmill.records import Decoding, Request

IMAGE_FORMATS = ("png", "jpeg", "webp")
QWEN_TOOL_TOKENS = frozenset({"<tool_call>", "</tool_call>"})


def image_data_uri(image: Any, fmt: str = "png", quality: int = 95) -> str:
    """A PIL image as a base64 data URI (PNG by default: lossless)."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r}: choose one of {IMAGE_FORMATS}")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    image.save(buf, format=fmt.upper(), **kwargs)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def media_parts(request: Request) -> Iterator[tuple[str, Any]]:
    """("image", PIL) and ("video", [frames]) in message order.

    The k-th image part of the messages is its own `image` value when it holds one, else `request.images[k]`
    (the families put placeholders in the messages and the prepared pixels in `images`); likewise videos.
    """
    counts = {"image": 0, "video": 0}
    pools = {"image": request.images, "video": request.videos}
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type")
            if kind not in counts:
                continue
            k = counts[kind]
            counts[kind] += 1
            value = part.get(kind)
            if value is None:
                if k >= len(pools[kind]):
                    raise ValueError(f"message {kind} #{k + 1} has no {kind} (request {request.item_id!r})")
                value = pools[kind][k]
            yield kind, value


def template_messages(request: Request) -> list[dict[str, Any]]:
    """The messages with media values removed: placeholders are all a chat template needs to render a prompt."""
    out = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": p["type"]} if p.get("type") in ("image", "video") else p for p in content]
        out.append({**message, "content": content})
    return out


def to_openai_messages(request: Request, *, image_format: str = "png", quality: int = 95, pil: bool = False) -> list:
    """OpenAI chat messages: images as `image_url` data URIs (or vLLM's in-process `image_pil` parts if `pil`)."""
    media = iter(media_parts(request))
    out = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "image":
                    _, image = next(media)
                    if pil:
                        parts.append({"type": "image_pil", "image_pil": image})
                    else:
                        parts.append(
                            {"type": "image_url", "image_url": {"url": image_data_uri(image, image_format, quality)}}
                        )
                elif kind == "video":
                    raise UnsupportedError("video input is not supported over the OpenAI chat API here; use images")
                elif kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    parts.append(part)
            content = parts
        out.append({**message, "content": content})
    return out


def sampling_fields(decoding: Decoding) -> dict[str, Any]:
    """Decoding as OpenAI chat-completion fields; greedy is temperature 0.

    `top_k` and `repetition_penalty` are not in OpenAI's API but vLLM, SGLang and llama.cpp's server read them;
    they are sent only when set.
    """
    out: dict[str, Any] = {"max_tokens": decoding.max_new_tokens}
    if decoding.do_sample:
        out["temperature"] = 1.0 if decoding.temperature is None else decoding.temperature
        if decoding.top_p is not None:
            out["top_p"] = decoding.top_p
        if decoding.top_k:
            out["top_k"] = decoding.top_k
    else:
        out["temperature"] = 0.0
    if decoding.repetition_penalty is not None:
        out["repetition_penalty"] = decoding.repetition_penalty
    if decoding.seed is not None:
        out["seed"] = decoding.seed
    if decoding.stop:
        out["stop"] = list(decoding.stop)
    return out


def response_format(constraint: dict[str, Any] | None) -> dict[str, Any]:
    """The request fields holding a constraint: `response_format` json_schema, or vLLM's `structured_outputs`.

    A JSON schema travels as the standard `response_format`; a tool-call shape or a grammar has no standard
    field, so it goes as vLLM's `structured_outputs.grammar` (servers other than vLLM reject or ignore it).
    """
    if not constraint:
        return {}
    from capmill.engines.grammars import compact_schema, tool_call_grammar

    kind, value = next(iter(constraint.items()))
    if kind == "json_schema":
        schema = compact_schema(value)
        name = str(value.get("title") or "output").replace(" ", "_")[:64]
        return {
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        }
    if kind == "tool_call":
        # Tool-call profiles are Qwen-native, and Qwen tokenizers hold these markers as single added tokens.
        return {"structured_outputs": {"grammar": tool_call_grammar(value, QWEN_TOOL_TOKENS)}}
    if kind == "grammar":
        return {"structured_outputs": {"grammar": value}}
    raise ValueError(f"unknown constraint kind {kind!r}")


def tool_calls_to_text(tool_calls: list[dict[str, Any]]) -> str:
    """Server-parsed tool calls back to the Qwen3.5-native text the profiles parse (the chat template's shape)."""
    from capmill.schema.render import render_arguments

    blocks = []
    for call in tool_calls:
        function = call.get("function", call)
        args = function.get("arguments") or {}
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        blocks.append(render_arguments(str(function.get("name")), args))
    return "\n".join(blocks)


# ---------------------------------------------------------------- the other way: OpenAI chat -> capmill

Turn = tuple[str, list[tuple[str, Any]]]  # role, [("text", str) | ("image_url", url) | ("image", index)]


def chat_turns(messages: list[dict[str, Any]]) -> list[Turn]:
    """OpenAI chat messages (as dicts) -> turns of text and `image_url` parts; `developer` is `system`."""
    turns: list[Turn] = []
    for message in messages:
        content = message.get("content")
        parts: list[tuple[str, Any]] = []
        if isinstance(content, str):
            parts.append(("text", content))
        elif content:
            for part in content:
                if part.get("type") == "text":
                    parts.append(("text", part.get("text") or ""))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    parts.append(("image_url", url.get("url") if isinstance(url, dict) else url))
                else:
                    raise ValueError(f"unsupported content part type {part.get('type')!r}")
        role = message.get("role", "user")
        turns.append(("system" if role == "developer" else role, parts))
    return turns


def hf_messages(turns: list[Turn], base: Request, images: list[Any]) -> list[dict[str, Any]]:
    """Turns (images as ("image", index) into `images`) in the Hugging Face form of the profile's own Request.

    Image blocks copy the shape of the profile's image block (some families carry the image inside it); the
    profile's system prompt is kept when the turns have none (the JSON captioner's scaffold).
    """
    image_block: dict[str, Any] = {"type": "image"}
    base_system = None
    for message in base.messages:
        if message.get("role") == "system" and base_system is None:
            base_system = message
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "image":
                    image_block = block
    out: list[dict[str, Any]] = []
    if base_system is not None and not any(role == "system" for role, _ in turns):
        out.append(base_system)
    for role, parts in turns:
        if role in ("system", "assistant"):
            out.append({"role": role, "content": "".join(v for k, v in parts if k == "text")})
            continue
        blocks: list[dict[str, Any]] = []
        for kind, value in parts:
            if kind == "text":
                blocks.append({"type": "text", "text": value})
            else:
                block = dict(image_block)
                if "image" in block:
                    block["image"] = images[value]
                blocks.append(block)
        out.append({"role": role, "content": blocks})
    return out


def decoding_from_fields(decoding: Decoding, fields: dict[str, Any]) -> Decoding:
    """The inverse of `sampling_fields`: OpenAI request fields on top of a profile's decoding.

    `max_completion_tokens` wins over `max_tokens`; temperature 0 means greedy; `stop` strings are added to the
    profile's own (a profile's stop marker still ends its output).
    """
    changes: dict[str, Any] = {
        "max_new_tokens": fields.get("max_completion_tokens") or fields.get("max_tokens"),
        "top_p": fields.get("top_p"),
        "top_k": fields.get("top_k"),
        "repetition_penalty": fields.get("repetition_penalty"),
        "seed": fields.get("seed"),
    }
    temperature = fields.get("temperature")
    if temperature is not None:
        if temperature == 0:
            changes["do_sample"] = False
            decoding = decoding.model_copy(update={"temperature": None, "top_p": None, "top_k": None})
        else:
            changes.update(do_sample=True, temperature=temperature)
    stop = fields.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else list(stop)
        changes["stop"] = tuple(dict.fromkeys([*decoding.stop, *(s for s in stops if s)]))
    return decoding.merged(**changes)
