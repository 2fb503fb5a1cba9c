"""Where the shared COCO photos are: `shared/data/coco` beside the repository (a checkout, or CI's clone)."""

from __future__ import annotations

from pathlib import Path

SHARED_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"
