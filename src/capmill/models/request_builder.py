"""`RequestBuilder`: one input -> the card's Request (decoded, resized, prompt built), with no model attached.

It holds only plain data (family name, prompts, decoding, tools), so it pickles: the pipeline sends it to its decode
worker processes, which then hand back finished Requests and the model's process only runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capmill.errors import InputError
from capmill.records import Decoding, Item, Request


@dataclass
class RequestBuilder:
    family_name: str
    mode: str
    prompts: dict[str, str | None]  # the user text of each mode (None in text mode)
    system: str | None
    decoding: Decoding
    tools: list[dict[str, Any]] | None = None
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    constraint: dict[str, Any] | None = None
    video_fps: float | None = None
    video_frames: int | None = None
    max_video_frames: int = 64
    _family: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_family": None}  # rebuilt from its name on the other side

    @property
    def family(self) -> Any:
        if self._family is None:
            from capmill.models.families import get_family

            self._family = get_family(self.family_name)
        return self._family

    def build(self, item: Item, mode: str | None = None) -> Request:
        """Decode the image / video or take the text, and build the card's prompt; InputError when unusable."""
        request = self._build(item, mode or self.mode)
        request.constraint = self.constraint
        if item.data is not None:
            request.content_hash = item.content_hash
        return request

    def _build(self, item: Item, mode: str) -> Request:
        if item.error:
            reason, _, detail = item.error.partition(": ")
            raise InputError(item.source, reason, detail)
        family = self.family
        common = {
            "system": self.system,
            "decoding": self.decoding,
            "tools": self.tools,
            "chat_kwargs": self.chat_kwargs,
        }
        if mode == "text":
            text = item.text if item.text is not None else (item.data or b"").decode("utf-8", "replace")
            if not text.strip():
                raise InputError(item.source, "empty text")
            if not family.supports_text_only:
                raise InputError(item.source, f"the {self.family_name} family cannot caption text")
            return family.build_request(item.id, prompt=text.strip(), **common)
        if item.kind == "text":
            raise InputError(item.source, f"text input needs mode 'text' (this captioner's mode is {mode!r})")
        prompt = self.prompts.get(mode)
        if item.kind == "video":
            if not family.supports_video:
                raise InputError(item.source, f"video is not supported by the {self.family_name} family")
            from capmill.data.video import sample_frames

            frames = sample_frames(
                item.data if item.data is not None else item.source,
                item.source,
                fps=self.video_fps if self.video_frames is None else None,
                count=self.video_frames,
                max_frames=self.max_video_frames,
            )
            return family.build_request(item.id, prompt=prompt, videos=[frames], **common)
        image = item.image
        if image is None:
            from capmill.data.images import decode_image

            image = decode_image(item.data, item.source)
        try:
            return family.build_request(item.id, prompt=prompt, images=[image], **common)
        except ValueError as exc:  # e.g. an aspect ratio the family's resizing refuses
            raise InputError(item.source, "unusable image", str(exc)) from exc
