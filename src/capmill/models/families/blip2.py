"""BLIP-2 (flan-t5): a plain prompt beside the image, Blip2Processor + Blip2ForConditionalGeneration.

The card's snippet names BlipProcessor/BlipForConditionalGeneration (BLIP-1 classes, which cannot load a
BLIP-2 checkpoint) and an undefined `images`; what it means is one prompt per image through the Blip2 classes:
`processor(images=images, text=[prompt] * len(images))`, `generate(max_new_tokens=30)`, decode skipping
special tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

from capmill.errors import ModelLoadError
from capmill.models.families.base import Family
from capmill.records import Request


class Blip2Family(Family):
    name: ClassVar[str] = "blip2"
    supports_text_only: ClassVar[bool] = False

    def build_request(self, item_id: str, *, prompt: str | None, **kwargs: Any) -> Request:
        request = super().build_request(item_id, prompt=prompt, **kwargs)
        request.prompt_text = prompt or ""
        return request

    def model_class(self) -> Any:
        from transformers import Blip2ForConditionalGeneration

        return Blip2ForConditionalGeneration

    def load_processor(self, model: str, **kwargs: Any) -> Any:
        from transformers import Blip2Processor

        try:
            processor = Blip2Processor.from_pretrained(model, **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"{model}: could not load a Blip2Processor ({type(exc).__name__}: {exc})") from exc
        return self.setup_padding(processor)

    def render(self, processor: Any, request: Request) -> str:
        return request.prompt_text or ""

    def encode(self, processor: Any, requests: list[Request]) -> Any:
        images = [im for r in requests for im in r.images]
        if len(images) != len(requests):
            raise ValueError("BLIP-2 takes exactly one image per request")
        return processor(images=images, text=[r.prompt_text or "" for r in requests], return_tensors="pt", padding=True)
