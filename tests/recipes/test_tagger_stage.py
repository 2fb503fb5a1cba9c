"""A WD tagger as a recipe stage, on a tiny random ONNX tagger in the real format and real photos of several sizes:
the tags equal `capmill caption --tagger`'s, later prompts really carry them, resume and reruns are per stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from capmill.errors import ConfigError
from capmill.recipes import Recipe
from capmill.recipes.runner import RecipeRunner
from capmill.records import sha256_hex
from capmill.run.runfolder import read_records, read_shard
from capmill.taggers.wd import TaggerOptions, WDTagger
from shared_data import SHARED_COCO

THRESHOLDS = {"general_threshold": 0.05, "character_threshold": 0.3, "max_tags": 12}


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    from capmill.testing.tagger import build_tiny_tagger

    return build_tiny_tagger(tmp_path_factory.mktemp("wd") / "tagger")


@pytest.fixture()
def photos(tmp_path, coco_photos):
    """Landscape, square, portrait and small COCO photos, a panorama strip cut from one (PNG), a shared photo when
    the shared set is there, and an unreadable file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in (coco_photos[0], coco_photos[2], coco_photos[3], coco_photos[9]):
        shutil.copy(p, folder / p.name)
    with Image.open(coco_photos[5]) as im:
        im.crop((0, 150, 640, 250)).save(folder / "strip.png")
    shared = sorted((SHARED_COCO / "val2017").glob("*.jpg"))[:1]
    for p in shared:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"")
    return folder


def tagger_stage(tagger_dir, **options):
    return {"name": "tags", "tagger": {"model": str(tagger_dir), **THRESHOLDS, **options}}


def three_stages(tagger_dir, tiny_model, **options):
    qwen = str(tiny_model("qwen2_vl"))
    return {
        "stages": [
            tagger_stage(tagger_dir, **options),
            {
                "name": "detailed",
                "model": qwen,
                "prompt": "Tags: {stages.tags}. Describe this photo.",
                "decoding": {"max_new_tokens": 8},
            },
            {
                "name": "short",
                "model": qwen,
                "mode": "text",
                "prompt": "Rating {stages.tags.rating}; characters: {stages.tags.characters}; general: "
                "{stages.tags.general}. Tags: {stages.tags}. Description: {stages.detailed}. Write a short caption.",
                "decoding": {"max_new_tokens": 6},
            },
        ]
    }


def stage_records(run_dir, name):
    folder = Path(run_dir) / "stages" / name / "records"
    return {r.id: r for shard in sorted(folder.glob("part-*")) for r in read_shard(str(shard))}


def sessions(summary):
    return {name: (s["session"]["skipped_done"], s["session"]["captioned"]) for name, s in summary["stages"].items()}


@pytest.mark.parametrize("arch", ["blip2", "qwen2_vl"])
def test_tags_equal_capmill_caption_tagger(tmp_path, tiny_model, tagger_dir, photos, arch):
    run_dir = tmp_path / "run"
    Recipe.from_dict({"stages": [tagger_stage(tagger_dir)]}).run([str(photos)], str(run_dir), progress=False)
    records = {os.path.basename(r.id): r for r in read_records(str(run_dir))}
    assert len(records) == len(list(photos.iterdir()))

    from capmill.cli.main import main

    options = tmp_path / "tagger.yaml"
    options.write_text(json.dumps({"model": str(tagger_dir), **THRESHOLDS}))
    out = tmp_path / "caption.jsonl"
    # beside a card that shows its model the photo as it is (BLIP-2) or resized to its patch grid (Qwen2-VL),
    # `--tagger` tags the photo itself, as the tagger's own code does
    model = str(tiny_model(arch))
    args = ["caption", str(photos), "--model", model, "--max-new-tokens", "2", "--tagger", str(options)]
    assert main([*args, "--out", str(out), "-q"]) == 0
    caption_rows = {os.path.basename(row["id"]): row for row in map(json.loads, out.open())}
    reference = WDTagger(TaggerOptions(model=str(tagger_dir), **THRESHOLDS))
    seen = set()
    for name, record in records.items():
        if name == "broken.jpg":  # unreadable: an error record of the stage, as any stage makes
            assert (
                record.status == "error" and "empty file" in record.error and record.stages["tags"]["status"] == "error"
            )
            continue
        assert record.status == "ok" and record.mode == "tags" and record.engine == "onnxruntime"
        assert record.tags["tags"] == caption_rows[name]["tags"]["tags"]
        assert record.tags["rating"] == caption_rows[name]["tags"]["rating"]
        assert record.caption == ", ".join(record.tags["tags"]) == record.stages["tags"]["caption"]
        with Image.open(photos / name) as im:  # the reference: the tagger on the photo itself
            assert record.tags == reference.tag([im.convert("RGB")])[0].to_dict()
        seen.add(record.caption)
    assert len(seen) > 2  # the tiny tagger tells the photos apart


def test_three_stages_prompts_resume_and_reruns(tmp_path, tiny_model, tagger_dir, photos, monkeypatch):
    run_dir = str(tmp_path / "run")
    inputs = [str(photos)]
    recipe = Recipe.from_dict(three_stages(tagger_dir, tiny_model))
    summary = recipe.run(inputs, run_dir, progress=False)
    n = len(list(photos.iterdir()))
    assert sessions(summary) == {"tags": (0, n - 1), "detailed": (0, n - 1), "short": (0, n - 1)}
    records = {r.id: r for r in read_records(run_dir)}
    detailed, short = stage_records(run_dir, "detailed"), stage_records(run_dir, "short")
    for item_id, record in records.items():
        if item_id.endswith("broken.jpg"):  # the tagger's error stands for it; the later stages leave it out
            assert set(record.stages) == {"tags"} and record.status == "error" and record.profile == "wd-tagger"
            continue
        tags = record.stages["tags"]["tags"]
        joined = ", ".join(tags["tags"])
        assert record.tags == tags and record.stages["tags"]["caption"] == joined  # the record's own `tags` field
        assert detailed[item_id].meta["recipe"]["prompt"] == f"Tags: {joined}. Describe this photo."
        assert short[item_id].mode == "text" and record.caption == record.stages["short"]["caption"]
        expected = (
            f"Rating {tags['rating']}; characters: {', '.join(tags['character'])}; general: "
            f"{', '.join(tags['general'])}. Tags: {joined}. Description: {detailed[item_id].caption}. "
            "Write a short caption."
        )
        assert short[item_id].content_hash == sha256_hex(expected)  # a text stage's input is its rendered prompt
        assert record.stages["short"]["status"] == "ok"

    # what the model of the detailed stage is sent: the tags are in the rendered chat text it reads
    plans = {p.stage.name: p for p in RecipeRunner(recipe, inputs, run_dir).plan()}
    from capmill.data.fetch import FetchOptions
    from capmill.data.images import DecodeOptions
    from capmill.recipes.source import StageSource
    from capmill.run.workers import load_item

    plan = plans["detailed"]
    items = [i for i in StageSource(os.path.join(plan.folder, "plan.json")) if not i.id.endswith("broken.jpg")]
    assert len(items) == n - 1
    for item in items[:2]:
        item, error, _ = load_item(item, DecodeOptions(), FetchOptions())
        assert error is None
        request = plan.captioner.prepare(item)
        inner = plan.captioner.inner
        rendered = inner.family.render(inner.processor(), request)
        assert f"Tags: {', '.join(records[item.id].tags['tags'])}. Describe this photo." in rendered

    # the same recipe: no work anywhere, the same records, and the tagger is not even loaded
    loads = []
    real_init = WDTagger.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(WDTagger, "__init__", counting_init)
    again = recipe.run(inputs, run_dir, progress=False)
    assert loads == []
    assert sessions(again) == {"tags": (n, 0), "detailed": (n - 1, 0), "short": (n - 1, 0)}
    assert [r.to_dict() for r in read_records(run_dir)] == [r.to_dict() for r in records.values()]

    # a threshold changes: the tagger stage and every stage after it run again
    lower = Recipe.from_dict(three_stages(tagger_dir, tiny_model, general_threshold=0.02))
    s = sessions(lower.run(inputs, run_dir, progress=False))
    assert s == {"tags": (0, n - 1), "detailed": (0, n - 1), "short": (0, n - 1)} and loads == [1]
    changed = {r.id: r for r in read_records(run_dir)}
    grew = [i for i, r in changed.items() if r.ok and len(r.tags["tags"]) > len(records[i].tags["tags"])]
    assert grew  # a lower threshold: more tags, and the prompts after it carry them
    for item_id in grew:
        assert (
            stage_records(run_dir, "detailed")[item_id]
            .meta["recipe"]["prompt"]
            .startswith(f"Tags: {changed[item_id].stages['tags']['caption']}.")
        )

    # back to the first thresholds: the kept folders are taken back, nothing is redone
    s = sessions(recipe.run(inputs, run_dir, progress=False))
    assert [s[k][1] for k in ("tags", "detailed", "short")] == [0, 0, 0]


def test_a_retrained_tagger_of_the_same_size_reruns_the_stage(tmp_path, tagger_dir, photos):
    from capmill.testing.tagger import build_tiny_tagger

    model = tmp_path / "tagger"
    shutil.copytree(tagger_dir, model)
    recipe = Recipe.from_dict({"stages": [tagger_stage(model)]})
    run_dir = str(tmp_path / "run")
    recipe.run([str(photos)], run_dir, progress=False)
    other = build_tiny_tagger(tmp_path / "other", seed=1)
    assert os.path.getsize(other / "model.onnx") == os.path.getsize(model / "model.onnx")
    shutil.copy(other / "model.onnx", model / "model.onnx")  # same path, same size, other weights
    s = sessions(recipe.run([str(photos)], run_dir, progress=False))
    assert s["tags"] == (0, len(list(photos.iterdir())) - 1)


def test_side_by_side_gives_the_same_records(tmp_path, tiny_model, tagger_dir, photos):
    data = three_stages(tagger_dir, tiny_model)
    Recipe.from_dict(data).run([str(photos)], str(tmp_path / "one"), progress=False)
    Recipe.from_dict({**data, "side_by_side": True}).run([str(photos)], str(tmp_path / "both"), progress=False)

    def keep(run):
        return [(r.id, r.status, r.caption, r.tags, {k: v["caption"] for k, v in r.stages.items()}) for r in run]

    assert keep(read_records(str(tmp_path / "both"))) == keep(read_records(str(tmp_path / "one")))


def test_sidecar_tags_and_show_prompt(tmp_path, tiny_model, tagger_dir, photos, capsys):
    import yaml

    from capmill.cli.main import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(three_stages(tagger_dir, tiny_model)))
    run_dir = tmp_path / "run"
    args = ["caption", str(photos), "--recipe", str(recipe), "--run-dir", str(run_dir), "-q"]
    assert main([*args, "--format", "sidecar", "--sidecar-kinds", "txt,tags"]) == 0
    for record in read_records(str(run_dir)):
        if record.ok:
            stem = Path(record.source).stem
            assert (photos / f"{stem}.tags.txt").read_text() == ", ".join(record.tags["tags"]) + "\n"
            assert (photos / f"{stem}.txt").read_text().strip() == record.caption.strip()
    capsys.readouterr()
    assert main(["caption", str(photos), "--recipe", str(recipe), "--show-prompt"]) == 0
    shown = capsys.readouterr().out
    assert "--- stage tags (tagger) ---" in shown and "Tags: <stages.tags>. Describe this photo." in shown


def bad(tagger_dir, **stage):
    return {"stages": [{"name": "tags", "tagger": {"model": str(tagger_dir)}, **stage}]}


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"prompt": "List tags."}, "stage 'tags', field 'prompt': a tagger stage has no language model"),
        ({"model": "x/y"}, "stage 'tags', field 'model': a tagger stage"),
        ({"constraints": {"max_words": 3}}, "stage 'tags', field 'constraints': a tagger stage"),
        ({"decoding": {"max_new_tokens": 3}}, "stage 'tags', field 'decoding': a tagger stage"),
        ({"tagger": {"model": "m", "threshold": 0.3}}, "stage 'tags', field 'tagger', field 'threshold'"),
        ({"tagger": {"model": "m", "general_threshold": 2}}, "stage 'tags', field 'tagger', field 'general_threshold'"),
    ],
)
def test_spec_errors_name_stage_and_field(tagger_dir, stage, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Recipe.from_dict(bad(tagger_dir, **stage))


def test_reading_a_field_a_tagger_lacks_is_refused(tagger_dir):
    data = {
        "stages": [
            tagger_stage(tagger_dir),
            {"name": "d", "model": "m", "prompt": "Subjects: {stages.tags.subjects}"},
        ]
    }
    with pytest.raises(
        ConfigError, match=r"stage 'd', field 'prompt': \{stages.tags.subjects\}: stage 'tags' is a tagger"
    ):
        Recipe.from_dict(data)


def test_missing_tagger_files_fail_before_any_model_loads(tmp_path, tiny_model, tagger_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    data = three_stages(tagger_dir, tiny_model)
    data["stages"][0]["tagger"]["model"] = str(empty)
    runner = RecipeRunner(Recipe.from_dict(data), [str(tmp_path)], str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="stage 'tags', field 'tagger.model': .*selected_tags.csv is missing"):
        runner.run()
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_relative_tagger_path_is_relative_to_the_recipe(tmp_path, tagger_dir):
    shutil.copytree(tagger_dir, tmp_path / "models" / "wd")
    (tmp_path / "r.yaml").write_text("stages:\n  - name: tags\n    tagger: {model: models/wd}\n")
    recipe = Recipe.load(tmp_path / "r.yaml")
    assert recipe.stage("tags").tagger.model == str((tmp_path / "models" / "wd").resolve())
    (tmp_path / "short.yaml").write_text("stages:\n  - name: tags\n    tagger: models/wd\n")  # as --tagger MODEL
    assert Recipe.load(tmp_path / "short.yaml").stage("tags").tagger == recipe.stage("tags").tagger


def test_a_video_is_an_error_record_and_no_tags_is_an_empty_list(tmp_path, tagger_dir, coco_photos):
    import av
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    with av.open(str(folder / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    shutil.copy(coco_photos[1], folder / coco_photos[1].name)
    none = {"general_threshold": 1.0, "character_threshold": 1.0}  # no score is above 1: no tag
    recipe = Recipe.from_dict({"stages": [{"name": "tags", "tagger": {"model": str(tagger_dir), **none}}]})
    recipe.run([str(folder)], str(tmp_path / "run"), progress=False)
    records = {Path(r.id).name: r for r in read_records(str(tmp_path / "run"))}
    video = records["clip.mp4"]
    assert video.status == "error" and "a tagger reads images, not video" in video.error
    photo = records[coco_photos[1].name]
    assert photo.status == "ok" and photo.caption == "" and photo.tags["tags"] == []
    assert photo.tags["rating"] in ("general", "sensitive", "questionable", "explicit")
    assert photo.notes == ["no tag above the thresholds"]
