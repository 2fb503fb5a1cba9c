"""decode_image on every awkward input of issue 4 item 4: upright RGB, or an InputError with the reason."""

from __future__ import annotations

import io

import pytest
from make_inputs import BAD, COCO, animated, cmyk, exif_rotated, jpeg, palette_transparent, sixteen_bit

from capmill.data.images import DecodeOptions, decode_image, decode_with_format
from capmill.errors import InputError

LIMITS = DecodeOptions(max_pixels=10_000_000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from make_inputs import make_inputs

    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.mark.parametrize("name", sorted(n for n in BAD if n != "broken_link.jpg"))
def test_bad_files_raise_input_error_with_reason(inputs, name):
    data = (inputs / name).read_bytes()
    with pytest.raises(InputError) as info:
        decode_image(data, str(inputs / name), options=LIMITS)
    assert info.value.reason == BAD[name]
    assert str(inputs / name) in str(info.value)


def test_bomb_limit_is_configurable(inputs):
    data = (inputs / "bomb.png").read_bytes()
    image = decode_image(data, "bomb.png", options=DecodeOptions(max_pixels=40_000_000))
    assert image.size == (6000, 6000) and image.mode == "RGB"


def test_exif_rotation_is_turned_upright():
    image = decode_image(exif_rotated(), "r.jpg")
    assert image.size == (20, 60)  # stored 60x20, orientation 6 = rotate 90 clockwise
    r, g, b = image.getpixel((10, 5))  # the red left half is now on top
    assert r > 200 and b < 60


def test_cmyk_becomes_rgb():
    image = decode_image(cmyk(), "c.jpg")
    r, g, b = image.getpixel((8, 8))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_sixteen_bit_keeps_brightness():
    image = decode_image(sixteen_bit(), "s.png")
    value = image.getpixel((3, 3))[0]
    assert image.mode == "RGB" and abs(value - round(40000 / 65535 * 255)) <= 1


def test_palette_transparency_on_white():
    image = decode_image(palette_transparent(), "p.png")
    assert image.getpixel((2, 2)) == (255, 0, 0) and image.getpixel((12, 2)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    image, ext = decode_with_format(animated(fmt), "a", DecodeOptions())
    r, g, b = image.getpixel((5, 5))
    assert g > 150 and r < 60 and image.size == (32, 32) and ext == fmt.lower()


def test_resize_and_draft_only_when_asked():
    photo = (COCO / "000000397133.jpg").read_bytes()
    full = decode_image(photo, "p")
    assert full.size == (640, 427)
    small = decode_image(photo, "p", options=DecodeOptions(resize_max_side=200, draft=True))
    assert max(small.size) == 200


def test_extreme_aspect_ratio():
    with pytest.raises(InputError) as info:
        decode_image(jpeg(size=(2000, 5)), "thin.jpg")
    assert info.value.reason == "extreme aspect ratio"


def test_pillow_global_pixel_limit_is_never_changed(monkeypatch):
    """Decoding applies its own limit per call; Pillow's process-wide one is left alone, even for a moment."""
    import threading

    from PIL import Image

    from capmill.data.images import DecodeOptions, decode_image
    from capmill.errors import InputError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        big = io.BytesIO()
        Image.new("RGB", (300, 200), (10, 200, 30)).save(big, "PNG")
        for _ in range(50):  # 60,000 pixels: over Pillow's (patched) limit, under ours
            assert decode_image(big.getvalue(), "big.png").size == (300, 200)
        with pytest.raises(InputError, match="decompression bomb"):
            decode_image(big.getvalue(), "big.png", options=DecodeOptions(max_pixels=50_000))
    finally:
        stop.set()
        watcher.join()
    assert seen == {1234}
