"""Decode image bytes into an upright RGB PIL image, or raise InputError naming the input and the problem."""

from __future__ import annotations

import io
from typing import Any

from capmill.errors import InputError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold


def decode_image(data: bytes | None, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Bytes -> RGB PIL.Image (EXIF orientation applied, first frame of animations)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise InputError(source, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise InputError(source, "too many pixels", f"{img.width}x{img.height} > {max_pixels}")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(source, "not an image", str(exc)) from exc
    except Image.DecompressionBombError as exc:
        raise InputError(source, "decompression bomb", str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(source, "corrupt image", str(exc)) from exc


def _to_rgb(img: Any) -> Any:
    from PIL import Image

    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        return Image.fromarray((arr / hi * 255.0).clip(0, 255).astype("uint8")).convert("RGB")
    return img.convert("RGB")
