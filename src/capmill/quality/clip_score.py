"""CLIPScore (Hessel et al. 2021): 2.5 * max(cos(image, caption), 0) with a CLIP-family model in the Hugging Face
format (hub id or local folder, loaded by `transformers.AutoModel`), scored in batches on any device.

CLIP reads 77 tokens; a caption longer than that is scored on its first 77 and marked `truncated`. A LongCLIP-
style checkpoint (a text encoder of more positions, e.g. 248) is the long-text variant: its own limit is used, so
long captions are scored whole and the score says `max_tokens: 248`.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from capmill.errors import MissingDependencyError, ModelLoadError

CLIPSCORE_WEIGHT = 2.5


@dataclass(frozen=True)
class ImageTextScore:
    """One caption's score against its image."""

    clip_score: float  # 2.5 * max(cosine, 0): the CLIPScore scale, 0 to 2.5
    cosine: float
    tokens: int  # the caption's tokens in the scorer's tokenizer, special tokens included
    truncated: bool  # the caption was longer than the scorer reads
    max_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClipScorer:
    """Image-text scores from one CLIP-family model (CLIP, LongCLIP, SigLIP: anything with get_*_features)."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, dtype: str = "float32"):
        try:
            import torch
            from transformers import AutoModel, AutoProcessor
        except ImportError as exc:  # pragma: no cover - torch and transformers are core dependencies
            raise MissingDependencyError("transformers", "eval", "CLIP scores") from exc
        self.name = model
        self.device = device
        self.batch_size = batch_size
        try:
            self.model = AutoModel.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(model)
        except Exception as exc:  # missing files, hub errors, a model of another kind: all mean "cannot load"
            raise ModelLoadError(
                f"image-text scorer {model!r} could not be loaded ({type(exc).__name__}: {exc})"
            ) from exc
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_tokens = int(getattr(text_config, "max_position_embeddings", 77))
        self._lock = threading.Lock()  # one forward at a time when device engines share a scorer

    @property
    def long_text(self) -> bool:
        return self.max_tokens > 77

    def score(self, images: list[Any], texts: list[str]) -> list[ImageTextScore]:
        """One score per (image, text) pair, in order; images are PIL images."""
        if len(images) != len(texts):
            raise ValueError("score() needs one image per text")
        out: list[ImageTextScore] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._batch(images[start : start + self.batch_size], texts[start : start + self.batch_size]))
        return out

    def _batch(self, images: list[Any], texts: list[str]) -> list[ImageTextScore]:
        import torch

        tokenizer = self.processor.tokenizer
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        text_in = tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        image_in = self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
        with self._lock, torch.inference_mode():
            dtype = next(self.model.parameters()).dtype
            image_features = self.model.get_image_features(pixel_values=image_in["pixel_values"].to(self.device, dtype))
            text_features = self.model.get_text_features(**{k: v.to(self.device) for k, v in text_in.items()})
        image_features = _tensor(image_features)
        text_features = _tensor(text_features)
        cos = torch.nn.functional.cosine_similarity(image_features.float(), text_features.float(), dim=-1).cpu()
        return [
            ImageTextScore(
                clip_score=CLIPSCORE_WEIGHT * max(float(c), 0.0),
                cosine=float(c),
                tokens=n,
                truncated=n > self.max_tokens,
                max_tokens=self.max_tokens,
            )
            for c, n in zip(cos, lengths, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "max_tokens": self.max_tokens, "long_text": self.long_text}


def _tensor(features: Any) -> Any:
    """transformers 5 may return a model output instead of a tensor from get_*_features; take its pooled tensor."""
    if hasattr(features, "pooler_output") and features.pooler_output is not None:
        return features.pooler_output
    return features


def resolve_device(device: str | None) -> str:
    """ "auto" or None: the first GPU when there is one, else the CPU; anything else as given."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


@lru_cache(maxsize=4)
def shared_scorer(model: str, device: str = "cpu", batch_size: int = 32) -> ClipScorer:
    """One scorer per (model, device) in a process, shared by every engine and stage that asks for it."""
    return ClipScorer(str(Path(model)) if Path(model).exists() else model, device, batch_size)
