"""Encode examples for training with label masks: loss falls on assistant tokens only (-100 elsewhere).

Each assistant turn's tokens are found with the model's own chat template: the conversation rendered up to
that turn with the generation prompt is a prefix of the whole conversation, and its tokens are a prefix of the
whole conversation's tokens (checked token by token). So the masked part is exactly what the model sees at
inference before it starts writing, and the labelled part is what it writes, through ``<|im_end|>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capmill.train.data import Example, RowError

IGNORE = -100
# Tensors aligned with input_ids (padded per row); everything else (pixels, grids) is concatenated.
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def load_image(path: str):
    from capmill.data.images import decode_image
    from capmill.errors import InputError

    try:
        return decode_image(Path(path).read_bytes(), path)
    except (OSError, InputError) as exc:
        raise RowError(f"image {path}: {exc}") from None


class Encoder:
    """Turns an Example into model inputs plus ``labels``; raises RowError for a row that cannot train."""

    def __init__(self, processor: Any, *, max_length: int, enable_thinking: bool = False):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        self.enable_thinking = enable_thinking
        self.chat = bool(getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None))

    def render(self, ex: Example, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        extra = {"enable_thinking": self.enable_thinking} if self._template_uses("enable_thinking") else {}
        return self.processor.apply_chat_template(
            messages, tools=ex.tools, tokenize=False, add_generation_prompt=generation_prompt, **extra
        )

    def _template_uses(self, name: str) -> bool:
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", "")
        return name in str(template)

    def _ids(self, text: str, images: list[Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if self.processor is self.tokenizer:
            kwargs["add_special_tokens"] = False
        return self.processor(**kwargs)

    def spans(self, ex: Example) -> tuple[str, list[tuple[int, str, str]]]:
        """The full text and, per supervised assistant turn, (message index, prefix text, prefix + turn text)."""
        full = self.render(ex, ex.messages, False)
        out = []
        for i, m in enumerate(ex.messages):
            if m["role"] != "assistant":
                continue
            before = self.render(ex, ex.messages[:i], True)
            upto = self.render(ex, ex.messages[: i + 1], False)
            if full.startswith(before) and full.startswith(upto) and len(upto) > len(before):
                out.append((i, before, upto))
            elif i == len(ex.messages) - 1:
                raise RowError("the chat template does not render the final assistant turn after its prompt")
            # An earlier turn the template renders differently in context (Qwen3.5 drops its think block)
            # stays unsupervised rather than being labelled with tokens the model would not write.
        return full, out

    def __call__(self, ex: Example) -> dict[str, Any]:
        return self._chat(ex) if self.chat else self._seq2seq(ex)

    def _chat(self, ex: Example) -> dict[str, Any]:
        images = [load_image(p) for p in ex.images]
        full, spans = self.spans(ex)
        enc = self._ids(full, images)
        ids = enc["input_ids"][0]
        if len(ids) > self.max_length:
            raise RowError(f"{len(ids)} tokens, longer than max_length {self.max_length}")
        labels = ids.new_full(ids.shape, IGNORE)
        for i, before, upto in spans:
            n_images_before = sum(1 for m in ex.messages[:i] for p in _parts(m) if p.get("type") == "image")
            pre = self._ids(before, images[:n_images_before])["input_ids"][0]
            end = self._ids(upto, images[:n_images_before])["input_ids"][0]
            if not (ids[: len(pre)].equal(pre) and ids[: len(end)].equal(end)):
                raise RowError("prompt tokens are not a prefix of the conversation's tokens (tokenizer merge)")
            labels[len(pre) : len(end)] = ids[len(pre) : len(end)]
        if not (labels != IGNORE).any():
            raise RowError("no assistant tokens to learn from")
        return _unbatch(enc) | {"labels": labels}

    def _seq2seq(self, ex: Example) -> dict[str, Any]:
        prompt, target = ex.prompt_and_target
        if not target.strip():
            raise RowError("empty target caption")
        kwargs: dict[str, Any] = {"text": prompt, "return_tensors": "pt"}
        if ex.images:
            kwargs["images"] = load_image(ex.images[0])
        enc = self.processor(**kwargs)
        labels = self.tokenizer(target, return_tensors="pt")["input_ids"][0]
        if len(labels) > self.max_length or enc["input_ids"].shape[1] > self.max_length:
            raise RowError(f"longer than max_length {self.max_length}")
        return _unbatch(enc) | {"labels": labels}


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _unbatch(enc: Any) -> dict[str, Any]:
    return {k: (v[0] if k in SEQUENCE_KEYS else v) for k, v in enc.items() if hasattr(v, "shape")}


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad sequence tensors (labels with -100), concatenate vision tensors in row order."""
    import torch

    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if key in SEQUENCE_KEYS or key == "labels":
            fill = IGNORE if key == "labels" else pad_id if key == "input_ids" else 0
            width = max(v.shape[0] for v in values)
            batch = values[0].new_full((len(values), width), fill)
            for i, v in enumerate(values):
                batch[i, : v.shape[0]] = v
            out[key] = batch
        else:
            out[key] = torch.cat(values, dim=0)
    return out
