"""The ready recipes in recipes/, end to end on tiny models of their checkpoints' architectures and real photos.

Each stage keeps everything its file says (prompts, prompt sets, modes, constraints, tag file); only the checkpoint
becomes a tiny model of the same architecture, the json-captioner gets a stand-in scaffold, and token budgets
shrink so the test is quick.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from capmill.recipes import Recipe
from capmill.run.runfolder import read_records
from shared_data import SHARED_COCO

READY = Path(__file__).parents[2] / "recipes"
STANDIN = Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl"
ARCH = {"inkscope-2b": "qwen2_vl", "json-captioner": "qwen3_5", "caprl-3b": "qwen2_5_vl"}
BUDGET = {"json-captioner": 96}


def tiny_recipe(name, tiny_model, tagger=None):
    data = yaml.safe_load((READY / name).read_text())
    for stage in data["stages"]:
        if "tagger" in stage:  # a WD tagger stage: a tiny tagger in the same format, every option kept
            stage["tagger"]["model"] = str(tagger)
            continue
        stage["model"] = str(tiny_model(ARCH[stage["profile"]]))
        if stage["profile"] == "json-captioner":
            stage["scaffold"] = str(STANDIN)
        decoding = dict(stage.get("decoding") or {})
        decoding["max_new_tokens"] = BUDGET.get(stage["profile"], min(decoding.get("max_new_tokens", 24), 24))
        stage["decoding"] = decoding
    data["base_dir"] = str(READY)
    return Recipe.from_dict(data)


@pytest.fixture()
def photos(tmp_path, coco_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos[7:10]:
        shutil.copy(p, folder / p.name)
    return folder


def test_caption_to_structured(tmp_path, tiny_model, photos):
    recipe = tiny_recipe("caption-to-structured.yaml", tiny_model)
    recipe.run([str(photos)], str(tmp_path / "run"), progress=False)
    records = list(read_records(str(tmp_path / "run")))
    assert len(records) == 3
    for r in records:
        caption, structured = r.stages["caption"], r.stages["structured"]
        assert caption["status"] == "ok" and caption["profile"] == "inkscope-2b"
        assert r.status in ("ok", "repaired") and r.profile == "json-captioner" and r.mode == "text"
        assert set(r.structured) >= {"subjects", "actions", "setting"}
        assert r.grounding is not None and 0.0 <= r.grounding["rate"] <= 1.0  # grounded against the stage-1 caption
        assert structured["grounding"] == r.grounding


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    from capmill.testing.tagger import build_tiny_tagger

    return build_tiny_tagger(tmp_path_factory.mktemp("wd") / "tagger")


@pytest.fixture()
def sized_photos(tmp_path, coco_photos):
    """Square, portrait and small landscape photos (and one of the shared set, when it is there)."""
    folder = tmp_path / "sized"
    folder.mkdir()
    for p in [coco_photos[2], coco_photos[3], coco_photos[9], *sorted((SHARED_COCO / "val2017").glob("*.jpg"))[1:2]]:
        shutil.copy(p, folder / p.name)
    return folder


def test_tags_to_training_caption(tmp_path, tiny_model, tagger, sized_photos):
    from PIL import Image

    from capmill.taggers.wd import WDTagger

    recipe = tiny_recipe("tags-to-training-caption.yaml", tiny_model, tagger)
    options = recipe.stage("tags").tagger
    assert options.max_tags == 20 and options.blacklist == ["realistic", "photo_(medium)"]
    recipe.run([str(sized_photos)], str(tmp_path / "run"), progress=False)
    records = list(read_records(str(tmp_path / "run")))
    detailed = {r.id: r for r in read_records(str(tmp_path / "run" / "stages" / "detailed"))}
    assert len(records) == len(list(sized_photos.iterdir())) >= 3
    wd = WDTagger(options)
    tagged = 0
    for r in records:
        stages = r.stages
        with Image.open(r.source) as im:
            expected = wd.tag([im.convert("RGB")])[0]
        assert r.tags == stages["tags"]["tags"] == expected.to_dict()  # the tagger's tags, as the tagger gives them
        assert stages["tags"]["caption"] == ", ".join(expected.tags)
        tagged += bool(expected.tags)
        prompt = detailed[r.id].meta["recipe"]["prompt"]
        assert prompt == f"Generate a detailed caption for this image. It has been tagged: {', '.join(expected.tags)}."
        # the token budget (24 here) ends the rewrite at a sentence end: the wrap-up closes the sentence in time
        assert stages["short"]["status"] == "ok" and r.caption == stages["short"]["caption"]
        assert r.caption.startswith("ohwx, ") and len(r.caption.split()) <= 40 and r.caption[-1] in ".!?"
        assert not {"image", "photo", "picture"} & set(r.caption.lower().replace(",", " ").split())
    assert tagged  # at least one photo has tags above the recipe's thresholds


def test_vlm_tags_to_training_caption(tmp_path, tiny_model, photos):
    recipe = tiny_recipe("vlm-tags-to-training-caption.yaml", tiny_model)
    vocabulary = set(recipe.stage("tags").constraints.tags)
    assert len(vocabulary) == 50
    recipe.run([str(photos)], str(tmp_path / "run"), progress=False)
    records = list(read_records(str(tmp_path / "run")))
    assert len(records) == 3
    for r in records:
        stages = r.stages
        tags = stages["tags"]["caption"].split(", ")
        assert set(tags) <= vocabulary and len(tags) == len(set(tags)) <= 20
        # the token budget (24 here) ends the rewrite at a sentence end: the wrap-up closes the sentence in time
        assert stages["short"]["status"] == "ok" and r.caption == stages["short"]["caption"]
        assert r.caption.startswith("ohwx, ") and len(r.caption.split()) <= 40 and r.caption[-1] in ".!?"
        assert not {"image", "photo", "picture"} & set(r.caption.lower().replace(",", " ").split())


def test_style_set(tmp_path, tiny_model, photos):
    recipe = tiny_recipe("style-set.yaml", tiny_model)
    recipe.run([str(photos)], str(tmp_path / "run"), progress=False)
    records = list(read_records(str(tmp_path / "run")))
    assert len(records) == 3
    styles = {"descriptive", "casual", "training_prompt", "tags"}
    for r in records:
        variant = r.stages["styles"]["variant"]
        style, length = variant.split(".")
        assert style in styles and length in {"short", "medium", "long"}
        assert list(r.captions) == [variant]
