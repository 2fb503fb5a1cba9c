"""Quality fixtures: tiny random CLIP models in the Hugging Face format (77 and LongCLIP's 248 text positions)."""

from __future__ import annotations

from pathlib import Path

import pytest

COCO = Path(__file__).parents[1] / "data" / "coco"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from capmill.testing.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip77") / "clip")


@pytest.fixture(scope="session")
def tiny_longclip(tmp_path_factory) -> Path:
    from capmill.testing.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip248") / "longclip", text_positions=248, seed=1)


@pytest.fixture(scope="session")
def photos():
    """Real COCO photos of several sizes and aspect ratios, as upright RGB PIL images."""
    from PIL import Image, ImageOps

    out = []
    for path in sorted(COCO.glob("*.jpg")):
        with Image.open(path) as im:
            out.append(ImageOps.exif_transpose(im).convert("RGB"))
    assert len({im.size for im in out}) > 3
    return out
