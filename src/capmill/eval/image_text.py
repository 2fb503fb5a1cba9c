"""Reference-free image-text agreement for `capmill eval`: CLIPScore of each caption against its own photo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capmill.records import Record


def _open(source: str) -> Any:
    from PIL import Image, ImageOps

    with Image.open(source) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def image_text_scores(records: list[Record], scorer: Any, notes: list[str], run_name: str) -> tuple[dict, dict]:
    """(run-level summary, record id -> per-item values) for every captioned record whose photo can be read."""
    pairs: list[tuple[str, Any, str]] = []
    unreadable = 0
    for r in records:
        if not r.caption:
            continue
        if not r.source or not Path(r.source).is_file():
            unreadable += 1
            continue
        try:
            pairs.append((r.id, _open(r.source), r.caption))
        except Exception:  # a photo that no longer decodes only loses its score
            unreadable += 1
    if unreadable:
        notes.append(f"run {run_name}: {unreadable} captioned records have no readable local image; not CLIP-scored")
    if not pairs:
        return {}, {}
    scores = scorer.score([p[1] for p in pairs], [p[2] for p in pairs])
    per_item = {
        rid: {
            "clip_score": s.clip_score,
            "clip_tokens_scored": min(s.tokens, s.max_tokens),
            "clip_truncated": s.truncated,
        }
        for (rid, _, _), s in zip(pairs, scores, strict=True)
    }
    values = np.array([s.clip_score for s in scores])
    summary = {
        **scorer.describe(),
        "clip_score": float(values.mean()),
        "clip_score_median": float(np.median(values)),
        "n": len(scores),
        "truncated": sum(s.truncated for s in scores),
        "unscored": unreadable,
    }
    return summary, per_item
