"""Qwen3.5 (the json-captioner's base): the processor's own chat-template call with tools and enable_thinking.

Exactly the card's `processor.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True,
tokenize=True, return_dict=True, return_tensors="pt", enable_thinking=False)`, batched with left padding;
the PIL image goes to the processor as it is (no qwen_vl_utils resizing in this card).
"""

from __future__ import annotations

from typing import Any, ClassVar

from capmill.models.families.base import Family, _same, with_media
from capmill.records import Request


class Qwen35Family(Family):
    name: ClassVar[str] = "qwen3_5"
    supports_video: ClassVar[bool] = True

    def encode(self, processor: Any, requests: list[Request]) -> Any:
        if not any(r.videos for r in requests):
            return super().encode(processor, requests)
        # Frames arrive already sampled: tell the video processor so, with their timestamps for the template.
        _same(requests, "tools")
        _same(requests, "chat_kwargs")
        conversations = [with_media(r) for r in requests]
        metadata = [_frames_metadata(v) for r in requests for v in r.videos]
        return processor.apply_chat_template(
            conversations if len(conversations) > 1 else conversations[0],
            tools=requests[0].tools,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "do_sample_frames": False, "video_metadata": metadata},
            **requests[0].chat_kwargs,
        )


def _frames_metadata(frames: list[Any]) -> Any:
    from transformers.video_utils import VideoMetadata

    fps = float(getattr(frames[0], "info", {}).get("capmill_fps", 0) or 0) or 1.0
    width, height = frames[0].size
    return VideoMetadata(
        total_num_frames=len(frames), fps=fps, width=width, height=height, frames_indices=list(range(len(frames)))
    )
