"""What a retry changes in a request: `apply_attempt` (decoding, token budget, prompt, a word-limit hint), and the
prompt and image of a request (`prompt_of`, `with_prompt`, `request_image`, `photo_of`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from capmill.quality.policy import Attempt
from capmill.records import Request


def apply_attempt(request: Request, attempt: Attempt, hint: str | None = None) -> Request:
    """The request with the attempt's changes: decoding fields, a larger budget, another prompt, and `hint`
    appended to the prompt. Requests without an image or video (text mode: the prompt is the input) keep theirs."""
    budget = attempt.max_new_tokens
    if attempt.max_new_tokens_factor is not None:
        budget = max(budget or 0, int(round(request.decoding.max_new_tokens * attempt.max_new_tokens_factor)))
    decoding = request.decoding.merged(
        do_sample=attempt.do_sample,
        temperature=attempt.temperature,
        top_p=attempt.top_p,
        repetition_penalty=attempt.repetition_penalty,
        max_new_tokens=budget,
        seed=attempt.seed,
    )
    changed = dataclasses.replace(request, decoding=decoding)
    if request_image(request) is None:
        return changed
    prompt = attempt.prompt if attempt.prompt is not None else None
    if hint:
        prompt = (prompt if prompt is not None else prompt_of(request)) + hint
    if prompt is not None:
        changed = with_prompt(changed, prompt)
    return changed


def prompt_of(request: Request) -> str:
    """The text of the request's last user message (or its plain prompt)."""
    if request.prompt_text is not None:
        return request.prompt_text
    for message in reversed(request.messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")
    return ""


def with_prompt(request: Request, prompt: str) -> Request:
    """The request with the text of its last user message (or its plain prompt) replaced by `prompt`."""
    if request.prompt_text is not None:
        return dataclasses.replace(request, prompt_text=prompt)
    messages = [dict(m) for m in request.messages]
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = prompt
        else:
            parts = [dict(p) for p in content or [] if not (isinstance(p, dict) and p.get("type") == "text")]
            message["content"] = [*parts, {"type": "text", "text": prompt}]
        break
    return dataclasses.replace(request, messages=messages)


def photo_of(request: Request) -> Any:
    """The input photo as decoded, before a profile resized it for its model, when the request kept its input
    (the tagger and the image-text scorer see what their own reference code would); else `request_image`."""
    item = getattr(request, "source_item", None)
    if item is not None and getattr(item, "image", None) is not None:
        return item.image
    return request_image(request)


def request_image(request: Request) -> Any:
    """The image a request shows the model (a video's middle frame), or None for text."""
    if request.images:
        return request.images[0]
    if request.videos and request.videos[0]:
        return request.videos[0][len(request.videos[0]) // 2]
    return None
