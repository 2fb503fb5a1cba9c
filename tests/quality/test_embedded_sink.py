"""Captions and tags written into JPEG and PNG files, read back by exiv2 (pyexiv2) and Pillow, never capmill."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from capmill.data.sinks.embedded import EmbeddedSink, embed_jpeg, embed_png
from capmill.records import Record

pyexiv2 = pytest.importorskip("pyexiv2")
CAPTION = 'Two dogs & a "cat" <on> a sofa, naïve café'
TAGS = ["dog", "cat", "long hair", ">_<"]


def _read_exiv2(path):
    image = pyexiv2.Image(str(path))
    try:
        return image.read_exif(), image.read_xmp()
    finally:
        image.close()


def _jpeg_with_exif(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"  # Make
    exif[0x0112] = 6  # Orientation: rotated
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(
        buf, "JPEG", exif=exif.tobytes(), quality=90
    )
    return buf.getvalue()


def test_jpeg_exif_and_xmp_read_back_by_exiv2_and_pillow(tmp_path, coco_photos):
    for data in (coco_photos[0].read_bytes(), _jpeg_with_exif(tmp_path)):
        out = embed_jpeg(data, CAPTION, TAGS)
        path = tmp_path / "a.jpg"
        path.write_bytes(out)
        exif, xmp = _read_exiv2(path)
        assert exif["Exif.Image.ImageDescription"] == CAPTION
        assert xmp["Xmp.dc.description"] == {'lang="x-default"': CAPTION}
        assert xmp["Xmp.dc.subject"] == TAGS
        with Image.open(path) as im:
            assert im.getexif()[0x010E].encode("latin-1").decode("utf-8") == CAPTION
            pixels = np.asarray(im)
        with Image.open(io.BytesIO(data)) as original:
            assert np.array_equal(pixels, np.asarray(original))  # nothing re-encoded
            old_exif = original.getexif()
        sos = data.index(b"\xff\xda")
        assert out.endswith(data[sos:])  # the compressed image data, byte for byte
        for tag, value in old_exif.items():  # other EXIF tags kept
            assert Image.open(path).getexif()[tag] == value
    path.write_bytes(embed_jpeg(data, "bell\x07 and tab\t", []))
    assert _read_exiv2(path)[1]["Xmp.dc.description"] == {'lang="x-default"': "bell and tab\t"}
    again = embed_jpeg(out, "second caption", [])  # a later write replaces, never piles up
    path.write_bytes(again)
    exif, xmp = _read_exiv2(path)
    assert exif["Exif.Image.ImageDescription"] == "second caption" and "Xmp.dc.subject" not in xmp
    assert again.count(b"http://ns.adobe.com/xap/1.0/") == 1


def test_png_text_and_xmp_read_back(tmp_path):
    buf = io.BytesIO()
    image = Image.new("RGBA", (30, 20), (10, 200, 30, 128))
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", "old description")
    info.add_text("Software", "painter")
    image.save(buf, "PNG", pnginfo=info)
    path = tmp_path / "a.png"
    path.write_bytes(embed_png(buf.getvalue(), CAPTION, TAGS))
    with Image.open(path) as im:
        im.load()
        assert im.text["Description"] == CAPTION and im.text["Software"] == "painter"
        assert np.array_equal(np.asarray(im), np.asarray(image))
    _, xmp = _read_exiv2(path)
    assert xmp["Xmp.dc.description"] == {'lang="x-default"': CAPTION} and xmp["Xmp.dc.subject"] == TAGS


def _record(source, rid, caption=CAPTION, status="ok"):
    return Record(
        id=rid,
        source=str(source),
        content_hash="h",
        profile="p",
        engine="e",
        model="m",
        prompt_hash="x",
        decoding={},
        status=status,
        caption=caption,
        tags={"tags": TAGS},
    )


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sink_writes_copies_and_leaves_originals_alone_unless_in_place(tmp_path, coco_photos):
    src = tmp_path / "src" / "sub"
    src.mkdir(parents=True)
    jpg = src / "photo.jpg"
    jpg.write_bytes(coco_photos[1].read_bytes())
    png = src / "shot.png"
    Image.open(coco_photos[2]).save(png)
    webp = src / "other.webp"
    Image.open(coco_photos[3]).save(webp)
    before = {p: _sha(p) for p in (jpg, png, webp)}
    sink = EmbeddedSink(str(tmp_path / "out"))
    sink.write(_record(jpg, "sub/photo.jpg"))
    sink.write(_record(png, "sub/shot.png"))
    sink.write(_record(webp, "sub/other.webp"))
    sink.write(_record(jpg, "sub/failed.jpg", caption=None, status="error"))
    sink.write(_record(tmp_path / "gone.jpg", "../../escape.jpg"))
    sink.close()
    assert {p: _sha(p) for p in before} == before
    assert sink.written == 2 and sink.skipped == {"format": 1, "no caption": 1, "not a local file": 1}
    assert _read_exiv2(tmp_path / "out" / "sub" / "photo.jpg")[0]["Exif.Image.ImageDescription"] == CAPTION
    assert Image.open(tmp_path / "out" / "sub" / "shot.png").text["Description"] == CAPTION
    assert not (tmp_path / "escape.jpg").exists()
    in_place = EmbeddedSink(in_place=True)
    in_place.write(_record(jpg, "sub/photo.jpg"))
    assert _sha(jpg) != before[jpg] and _read_exiv2(jpg)[1]["Xmp.dc.subject"] == TAGS
    assert sorted(p.name for p in src.iterdir()) == ["other.webp", "photo.jpg", "shot.png"]  # no temporary left


def test_cli_embeds_captions_and_tags_into_copies(tiny_model, coco_photos, tmp_path):
    from capmill.cli.main import main
    from capmill.testing.tagger import build_tiny_tagger

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos[:2]:
        (photos / p.name).write_bytes(p.read_bytes())
    tagger = build_tiny_tagger(tmp_path / "tagger")
    qwen = tiny_model("qwen2_vl")
    out = tmp_path / "records.jsonl"
    args = ["caption", str(photos), "--model", str(qwen), "--profile", "inkscope-2b", "--max-new-tokens", "6"]
    assert main([*args, "--tagger", str(tagger), "--embed", str(tmp_path / "tagged"), "--out", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 2
    for row in rows:
        (copy,) = (tmp_path / "tagged").rglob(row["id"].lstrip("/"))  # the record's name, under the folder
        exif, xmp = _read_exiv2(copy)
        caption = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", "", row["caption"])  # what XML can carry
        assert exif["Exif.Image.ImageDescription"] == caption
        assert xmp["Xmp.dc.description"] == {'lang="x-default"': caption}
        assert xmp.get("Xmp.dc.subject", []) == row["tags"]["tags"]
    assert main([*args, "--embed", "x", "--in-place", "--out", str(out)]) == 2
    assert main([*args, "--in-place", "--out", str(tmp_path / "again.jsonl"), "-q"]) == 0  # the originals now
    for row in rows:
        exif, _ = _read_exiv2(row["source"])
        assert exif["Exif.Image.ImageDescription"] == re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", "", row["caption"])
    assert sorted(p.name for p in photos.iterdir()) == sorted(p.name for p in coco_photos[:2])  # no temporaries
