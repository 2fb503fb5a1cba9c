"""WD-format ONNX taggers: the same tags as the reference tagger code, capmill's selection options, and the run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from capmill.taggers.wd import KAOMOJIS, TaggerOptions, WDTagger


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    from capmill.testing.tagger import build_tiny_tagger

    return build_tiny_tagger(tmp_path_factory.mktemp("wd") / "tagger")


def _reference(model_dir, image, general_thresh=0.35, character_thresh=0.85):
    """The reference tagger space's own steps (SmilingWolf/wd-tagger app.py), written out independently."""
    import onnxruntime as rt

    with open(model_dir / "selected_tags.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [r["name"] if r["name"] in KAOMOJIS else r["name"].replace("_", " ") for r in rows]
    rating_indexes = [i for i, r in enumerate(rows) if r["category"] == "9"]
    general_indexes = [i for i, r in enumerate(rows) if r["category"] == "0"]
    character_indexes = [i for i, r in enumerate(rows) if r["category"] == "4"]
    model = rt.InferenceSession(str(model_dir / "model.onnx"))
    _, height, _, _ = model.get_inputs()[0].shape
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, ((max_dim - image.size[0]) // 2, (max_dim - image.size[1]) // 2))
    if max_dim != height:
        padded = padded.resize((height, height), Image.BICUBIC)
    array = np.expand_dims(np.asarray(padded, dtype=np.float32)[:, :, ::-1], axis=0)
    preds = model.run([model.get_outputs()[0].name], {model.get_inputs()[0].name: array})[0]
    labels = list(zip(names, preds[0].astype(float), strict=True))
    rating = dict(labels[i] for i in rating_indexes)
    general = dict(x for x in (labels[i] for i in general_indexes) if x[1] > general_thresh)
    character = dict(x for x in (labels[i] for i in character_indexes) if x[1] > character_thresh)
    return rating, general, character


def _images(coco_photos):
    images = [Image.open(p) for p in coco_photos]
    rgba = Image.new("RGBA", (90, 40), (0, 0, 0, 0))  # transparent, wide: composited on white and padded
    rgba.paste((200, 30, 30, 255), (10, 10, 50, 30))
    return [*images, rgba, Image.new("L", (17, 300), 90)]


def test_tags_equal_the_reference_tagger_code(tagger_dir, coco_photos):
    tagger = WDTagger(TaggerOptions(model=str(tagger_dir), batch_size=5))
    images = _images(coco_photos)
    results = tagger.tag(images)
    seen = set()
    for image, tags in zip(images, results, strict=True):
        rating, general, character = _reference(tagger_dir, image)
        assert tags.ratings == pytest.approx(rating, abs=1e-6)
        assert list(tags.general) == sorted(general, key=general.get, reverse=True)
        assert tags.character == pytest.approx(dict(sorted(character.items(), key=lambda x: -x[1])), abs=1e-6)
        assert tags.rating == max(rating, key=rating.get)
        assert tags.tags == [*tags.character, *tags.general]
        seen.add(tuple(tags.tags))
    assert len(seen) > 3  # the tiny tagger tells photos apart


def test_batch_size_does_not_change_scores(tagger_dir, coco_photos):
    images = _images(coco_photos)
    one = WDTagger(TaggerOptions(model=str(tagger_dir), batch_size=1)).scores(images)
    many = WDTagger(TaggerOptions(model=str(tagger_dir), batch_size=8)).scores(images)
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_selection_options(tagger_dir):
    base = WDTagger(TaggerOptions(model=str(tagger_dir)))
    row = np.zeros(len(base.names), dtype=np.float32)
    score = {"general": 0.9, "sensitive": 0.1, "long hair": 0.8, "dog": 0.7, "smile": 0.5, ">_<": 0.6, "sky": 0.2}
    score |= {"character 0 (series)": 0.95, "character 1 (series)": 0.5}
    for name, value in score.items():
        row[base.names.index(name)] = value
    tags = base.select(row)
    assert tags.tags == ["character 0 (series)", "long hair", "dog", ">_<", "smile"]  # kaomoji keep "_"
    assert tags.rating == "general"
    opts = dict(blacklist=["long_hair"], max_tags=2, rating_tag=True, character_first=False, character_threshold=0.4)
    tagger = WDTagger(TaggerOptions(model=str(tagger_dir), **opts))
    assert tagger.select(row).tags == [
        "general",
        "dog",
        ">_<",
        "character 0 (series)",
        "character 1 (series)",
    ]
    raw = WDTagger(TaggerOptions(model=str(tagger_dir), underscores=True, escape_parentheses=True))
    assert raw.select(row).tags[:2] == ["character_0_\\(series\\)", "long_hair"]


def test_a_folder_without_the_tag_list_is_a_clear_error(tmp_path, tagger_dir):
    from capmill.errors import ModelLoadError

    (tmp_path / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError, match="selected_tags.csv is missing"):
        WDTagger(TaggerOptions(model=str(tmp_path)))


def test_run_writes_tags_field_and_sidecar(tiny_model, tagger_dir, coco_photos, tmp_path):
    from capmill.cli.main import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    options = tmp_path / "tagger.yaml"
    options.write_text(f"model: {tagger_dir}\ngeneral_threshold: 0.3\nmax_tags: 5\n")
    qwen = tiny_model("qwen2_vl")
    args = ["caption", str(photos), "--model", str(qwen), "--profile", "inkscope-2b", "--max-new-tokens", "4"]
    run_dir = tmp_path / "run"
    common = ["--tagger", str(options), "--run-dir", str(run_dir), "-q"]
    assert main([*args, *common, "--format", "sidecar", "--sidecar-kinds", "txt,tags"]) == 0
    tagger = WDTagger(TaggerOptions(model=str(tagger_dir), general_threshold=0.3, max_tags=5))
    for p in sorted(photos.glob("*.jpg")):
        expected = tagger.tag([Image.open(p).convert("RGB")])[0]
        assert (photos / f"{p.stem}.tags.txt").read_text() == ", ".join(expected.tags) + "\n"
        assert (photos / f"{p.stem}.txt").exists()
    out = tmp_path / "out.jsonl"
    assert main([*args, "--tagger", str(options), "--out", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 3 and all(len(r["tags"]["tags"]) <= 5 + 8 for r in rows)
    assert all(set(r["tags"]) == {"tags", "rating", "ratings", "general", "character"} for r in rows)
