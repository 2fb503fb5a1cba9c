"""Decode image bytes into an upright RGB PIL image, or raise InputError naming the input and the problem.

Runs in the pipeline's decode worker processes; everything here is plain PIL and numpy, no torch.

Version-sensitive: `_open` opens an image through Pillow's plugin registry (`Image.ID`, `Image.OPEN`, the
`preinit`/`init` loaders, as `Image.open` does) so that our own per-call pixel limit replaces Pillow's
process-wide `Image.MAX_IMAGE_PIXELS`, which is never changed; checked against Pillow 11 to 13.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Any

from capmill.errors import InputError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
DEFAULT_MAX_SIDE = 32_768  # no captioner resizes sensibly from a side longer than this
DEFAULT_MAX_ASPECT = 200.0  # Qwen-VL processors refuse more than 200:1

# Format names PIL reports -> the file extension trainers expect.
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff", "MPO": "jpg"}


@dataclass(frozen=True)
class DecodeOptions:
    """Limits and optional downscaling; `max_side`/`draft` change pixels, so only where a profile allows them."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_dimension: int = DEFAULT_MAX_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT
    resize_max_side: int | None = None  # downscale so the longer side is at most this (None: never)
    draft: bool = False  # JPEG draft mode (decode at 1/2, 1/4, 1/8 scale) before resizing


def decode_image(
    data: bytes | None,
    source: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    options: DecodeOptions | None = None,
) -> Any:
    """Bytes -> RGB PIL.Image (EXIF orientation applied, first frame of animations)."""
    if options is None:
        options = DecodeOptions(max_pixels=max_pixels)
    return decode_with_format(data, source, options)[0]


def decode_with_format(data: bytes | None, source: str, options: DecodeOptions) -> tuple[Any, str | None]:
    """Like decode_image, also returning the file extension of the encoded format ("jpg", "png", ...)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(source, "empty file", "0 bytes")
    try:
        img = _open(data)
        with img:
            fmt = FORMAT_EXT.get(img.format or "", (img.format or "").lower() or None)
            _check_size(img.width, img.height, source, options)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if options.draft and options.resize_max_side and img.format == "JPEG":
                img.draft("RGB", _target_size(img.width, img.height, options.resize_max_side))
            img.load()
            out = _upright(img)
            out = _to_rgb(out)
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(source, "not an image", f"no image format recognised in its {len(data):,} bytes") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(source, "decompression bomb", _short(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error) as exc:
        text = _short(exc)
        reason = "truncated image" if "truncated" in text or "broken data stream" in text else "corrupt image"
        raise InputError(source, reason, text) from exc
    if options.resize_max_side and max(out.size) > options.resize_max_side:
        out = out.resize(_target_size(out.width, out.height, options.resize_max_side), Image.Resampling.BICUBIC)
    return out, fmt


def _open(data: bytes) -> Any:
    """`Image.open` without Pillow's global decompression-bomb check (ours, per call, follows in `_check_size`):
    the first registered format that accepts the header and parses it."""
    from PIL import Image, UnidentifiedImageError

    fp = io.BytesIO(data)
    prefix = fp.read(16)
    tried: set[str] = set()
    for loader in (Image.preinit, Image.init):
        loader()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            accepted = not accept or accept(prefix)
            if not accepted or isinstance(accepted, str):
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all (Image.open goes on to the next one too)
    raise UnidentifiedImageError("cannot identify image file")


def _check_size(width: int, height: int, source: str, options: DecodeOptions) -> None:
    if width <= 0 or height <= 0:
        raise InputError(source, "corrupt image", f"size {width}x{height}")
    if width * height > options.max_pixels:
        raise InputError(source, "decompression bomb", f"{width}x{height} pixels > limit {options.max_pixels}")
    if max(width, height) > options.max_dimension:
        raise InputError(source, "image too large", f"{width}x{height}: a side exceeds {options.max_dimension}")
    if max(width, height) / min(width, height) > options.max_aspect:
        raise InputError(source, "extreme aspect ratio", f"{width}x{height} exceeds {options.max_aspect:g}:1")


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _upright(img: Any) -> Any:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than failing the image."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF must not lose an otherwise good image
        return img.copy()


def _to_rgb(img: Any) -> Any:
    from PIL import Image

    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode != "F" and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0  # 16-bit data: keep the full range, brightness means something
        span = (hi - lo) or 1.0
        return Image.fromarray(((arr - lo) / span * 255.0).clip(0, 255).astype("uint8")).convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, L, 1, P without transparency


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _short(exc: BaseException) -> str:
    # PIL names the in-memory file by its address; drop it so the same bad input gives the same record every run
    text = _ADDRESS.sub("", str(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
