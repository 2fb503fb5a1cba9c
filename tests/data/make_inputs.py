"""Builds the awkward input files of issue 4 item 4 in a folder: each a real file of the real format."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

COCO = Path(__file__).parent / "coco"


def jpeg(color=(200, 30, 30), size=(64, 48), **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def exif_rotated() -> bytes:
    """A 60x20 landscape JPEG whose EXIF says "rotate 90 CW" (orientation 6): upright it is 20x60."""
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def palette_transparent() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 8, 16))  # left half palette index 1 (red), right half index 0 (transparent)
    img.info["transparency"] = 0
    return png(img)


def sixteen_bit() -> bytes:
    import numpy as np

    arr = np.full((16, 16), 40000, dtype=np.uint16)
    return png(Image.fromarray(arr))


def cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG")  # pure red in CMYK
    return buf.getvalue()


def bomb(side: int = 6000) -> bytes:
    """A tiny PNG that claims side x side pixels (36 MP by default: over a 10 MP limit)."""
    buf = io.BytesIO()
    Image.new("1", (side, side), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def huge_dimensions() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (40000, 1), 0).save(buf, "PNG")
    return buf.getvalue()


GOOD = ("exif_rotated.jpg", "cmyk.jpg", "sixteen_bit.png", "palette_alpha.png", "animated.gif", "animated.webp")
BAD = {  # file name -> error reason
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated image",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "huge.png": "image too large",
    "broken_link.jpg": "broken symlink",
}


def make_inputs(folder: Path) -> Path:
    """Write every awkward case into `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = (COCO / "000000397133.jpg").read_bytes()
    files = {
        "zero.jpg": b"",
        "truncated.jpg": photo[: len(photo) // 2],
        "text.jpg": b"this is a text file with an image extension\n",
        "bomb.png": bomb(),
        "huge.png": huge_dimensions(),
        "exif_rotated.jpg": exif_rotated(),
        "cmyk.jpg": cmyk(),
        "sixteen_bit.png": sixteen_bit(),
        "palette_alpha.png": palette_transparent(),
        "animated.gif": animated("GIF"),
        "animated.webp": animated("WEBP"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    link = folder / "broken_link.jpg"
    if not link.is_symlink():
        os.symlink(folder / "does-not-exist.jpg", link)
    return folder
