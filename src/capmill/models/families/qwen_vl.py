"""Qwen2-VL and Qwen2.5-VL: chat template rendered to text, images resized as qwen_vl_utils does, then the processor.

This is the transformers recipe of the Qwen2-VL / Qwen2.5-VL model cards that the Inkscope card copies and the
CapRL-3B card points to: `process_vision_info(messages)` resizes every image to multiples of 28 within
[4, 16384] * 28 * 28 pixels with PIL's default (bicubic) filter, and the processor sees those pixels.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from capmill.models.families.base import Family, _same
from capmill.records import Request

# qwen_vl_utils.vision_process constants (image_patch_size=14, spatial merge 2)
FACTOR = 28
MIN_PIXELS = 4 * FACTOR * FACTOR
MAX_PIXELS = 16384 * FACTOR * FACTOR
MAX_RATIO = 200
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR
FRAME_FACTOR = 2


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) divisible by `factor`, area within bounds, aspect kept: qwen_vl_utils.smart_resize."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio must be under {MAX_RATIO}, got {max(height, width) / min(height, width):.1f}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen2VLFamily(Family):
    name: ClassVar[str] = "qwen2_vl"
    supports_video: ClassVar[bool] = True
    decode_kwargs: ClassVar[dict[str, Any]] = {"clean_up_tokenization_spaces": False}

    def prepare_image(self, image: Any) -> Any:
        width, height = image.size
        h, w = smart_resize(height, width)
        return image.resize((w, h))

    def prepare_video(self, frames: list[Any]) -> list[Any]:
        """Even frame count (last frame repeated) and one size per video within the video pixel budget."""
        frames = list(frames)
        if len(frames) % FRAME_FACTOR:
            frames.append(frames[-1])
        width, height = frames[0].size
        max_pixels = max(
            min(VIDEO_MAX_PIXELS, 128000 * FACTOR * FACTOR * 0.9 / len(frames) * FRAME_FACTOR),
            int(VIDEO_MIN_PIXELS * 1.05),
        )
        h, w = smart_resize(height, width, min_pixels=VIDEO_MIN_PIXELS, max_pixels=int(max_pixels))
        return [f.resize((w, h)) for f in frames]

    def encode(self, processor: Any, requests: list[Request]) -> Any:
        """The card: text = apply_chat_template(tokenize=False); processor(text, images, videos, padding=True)."""
        _same(requests, "chat_kwargs")
        texts = [self.render(processor, r) for r in requests]
        images = [im for r in requests for im in r.images]
        videos = [v for r in requests for v in r.videos]
        kwargs: dict[str, Any] = {}
        if videos:
            kwargs["do_sample_frames"] = False
        return processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            padding=True,
            return_tensors="pt",
            **kwargs,
        )


class Qwen25VLFamily(Qwen2VLFamily):
    name: ClassVar[str] = "qwen2_5_vl"
