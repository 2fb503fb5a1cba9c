"""Recipes end to end on tiny real models (transformers engine) and real photos: records, templates, per-stage resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from capmill.recipes import Recipe
from capmill.run.runfolder import read_records, read_shard
from shared_data import SHARED_COCO

STANDIN = Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl"


@pytest.fixture()
def photos(tmp_path, coco_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos[:4]:  # several sizes and aspect ratios
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"")  # a zero-byte file: an error record, the run goes on
    return folder


@pytest.fixture()
def metadata(tmp_path, photos):
    path = tmp_path / "tags.csv"
    rows = ["file_name,tags"] + [f"{p.name},tag{i} outdoors" for i, p in enumerate(sorted(photos.glob("*.jpg")))]
    path.write_text("\n".join(rows) + "\n")
    return path


def two_stages(tiny_model, metadata, structured_tokens=64):
    return {
        "name": "test",
        "metadata": str(metadata),
        "stages": [
            {
                "name": "detailed",
                "model": str(tiny_model("qwen2_vl")),
                "prompt": "Describe {filename} in {folder}. Tags: {meta.tags}.",
                "decoding": {"max_new_tokens": 10},
            },
            {
                "name": "structured",
                "model": str(tiny_model("qwen3_5")),
                "profile": "json-captioner",
                "scaffold": str(STANDIN),
                "mode": "text",
                "prompt": "{stages.detailed}",
                "constrained": True,
                "decoding": {"max_new_tokens": structured_tokens},
            },
        ],
    }


def sessions(summary):
    return {name: s["session"] for name, s in summary["stages"].items()}


def stage_records(run_dir, name):
    folder = Path(run_dir) / "stages" / name / "records"
    return {r.id: r for shard in sorted(folder.glob("part-*")) for r in read_shard(str(shard))}


def test_two_stages_records_and_per_stage_resume(tmp_path, tiny_model, photos, metadata):
    run_dir = str(tmp_path / "run")
    inputs = [str(photos)]
    first = Recipe.from_dict(two_stages(tiny_model, metadata))
    summary = first.run(inputs, run_dir, progress=False)
    records = {r.id: r for r in read_records(run_dir)}
    assert len(records) == 5 and summary["run"]["records"] == 5
    detailed = stage_records(run_dir, "detailed")
    for item_id, record in records.items():
        stages = record.stages
        if item_id.endswith("broken.jpg"):  # the first stage's error stands for it; later stages leave it out
            assert set(stages) == {"detailed"} and stages["detailed"]["status"] == "error"
            assert record.status == "error" and "empty file" in record.error and record.profile == "generic"
            continue
        assert set(stages) == {"detailed", "structured"}
        assert record.caption == stages["structured"]["caption"]
        name = os.path.basename(item_id)
        prompt = detailed[item_id].meta["recipe"]["prompt"]
        tags = next(line.split(",")[1] for line in metadata.read_text().splitlines() if line.startswith(name))
        assert prompt == f"Describe {name} in photos. Tags: {tags}."
        assert stages["detailed"]["caption"] == detailed[item_id].caption
        assert record.status in ("ok", "repaired")  # held to the tool call
        assert record.structured is not None and 0.0 <= record.grounding["rate"] <= 1.0
        assert record.mode == "text" and os.path.basename(record.source) == name  # the photo the chain began at

    again = first.run(inputs, run_dir, progress=False)  # the same recipe: nothing is redone, no model loads
    assert {n: (s["skipped_done"], s["captioned"]) for n, s in sessions(again).items()} == {
        "detailed": (5, 0),
        "structured": (4, 0),
    }
    assert [r.to_dict() for r in read_records(run_dir)] == [r.to_dict() for r in records.values()]

    changed = Recipe.from_dict(two_stages(tiny_model, metadata, structured_tokens=96))  # the second stage changes
    s = sessions(changed.run(inputs, run_dir, progress=False))
    assert (s["detailed"]["captioned"], s["structured"]["captioned"]) == (0, 4)
    assert os.path.isdir(os.path.join(run_dir, "stages", ".replaced"))

    grown = two_stages(tiny_model, metadata, structured_tokens=96)
    grown["stages"].append(
        {
            "name": "short",
            "model": str(tiny_model("qwen2_vl")),
            "mode": "text",
            "prompt": "Shorten: {stages.detailed} Subjects: {stages.structured.subjects}",
            "decoding": {"max_new_tokens": 6},
        }
    )
    s = sessions(Recipe.from_dict(grown).run(inputs, run_dir, progress=False))  # a new stage runs alone
    assert [s[n]["captioned"] for n in ("detailed", "structured", "short")] == [0, 0, 4]
    records = [r for r in read_records(run_dir) if not r.id.endswith("broken.jpg")]
    assert len(records) == 4
    assert all(set(r.stages) == {"detailed", "structured", "short"} for r in records)
    assert all(r.caption == r.stages["short"]["caption"] for r in records)

    s = sessions(first.run(inputs, run_dir, progress=False))  # back to the first settings: taken back, not redone
    assert (s["detailed"]["captioned"], s["structured"]["captioned"]) == (0, 0)
    assert all("short" not in r.stages for r in read_records(run_dir))


def test_same_image_with_other_metadata_is_its_own_caption(tmp_path, tiny_model, coco_photos):
    folder = tmp_path / "same"
    folder.mkdir()
    shutil.copy(coco_photos[0], folder / "a.jpg")
    shutil.copy(coco_photos[0], folder / "b.jpg")
    shutil.copy(coco_photos[0], folder / "c.jpg")
    meta = tmp_path / "m.jsonl"
    meta.write_text(
        "\n".join(
            json.dumps({"file_name": n, "tags": t}) for n, t in [("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "red")]
        )
    )
    recipe = Recipe.from_dict(
        {
            "metadata": str(meta),
            "stages": [
                {
                    "name": "c",
                    "model": str(tiny_model("qwen2_vl")),
                    "prompt": "A {meta.tags} photo.",
                    "decoding": {"max_new_tokens": 8},
                }
            ],
        }
    )
    summary = recipe.run([str(folder)], str(tmp_path / "run"), progress=False)
    session = summary["stages"]["c"]["session"]
    assert (session["captioned"], session["duplicates_copied"]) == (2, 1)  # a and b differ; c is a's copy
    by_name = {os.path.basename(i): r for i, r in stage_records(str(tmp_path / "run"), "c").items()}
    assert by_name["a.jpg"].meta["recipe"]["prompt"] == "A red photo." == by_name["c.jpg"].meta["recipe_prompt"]
    assert by_name["b.jpg"].meta["recipe"]["prompt"] == "A blue photo."
    assert by_name["c.jpg"].meta["duplicate_of"] == by_name["a.jpg"].id
    assert by_name["a.jpg"].content_hash != by_name["b.jpg"].content_hash


def test_missing_metadata_column_is_an_error_record(tmp_path, tiny_model, coco_photos):
    recipe = Recipe.from_dict(
        {"stages": [{"name": "c", "model": str(tiny_model("qwen2_vl")), "prompt": "Tags: {meta.tags}"}]}
    )
    recipe.run([str(coco_photos[0])], str(tmp_path / "run"), progress=False)
    (record,) = read_records(str(tmp_path / "run"))
    assert record.status == "error" and "no metadata column 'tags'" in record.error


def test_manifest_columns_and_output_stage(tmp_path, tiny_model, coco_photos):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"id": f"p{i}", "path": str(p), "subject": s}
        for i, (p, s) in enumerate(zip(coco_photos[:2], ["a cat", "a bus"], strict=True))
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model = str(tiny_model("qwen2_vl"))
    recipe = Recipe.from_dict(
        {
            "output": "first",
            "stages": [
                {
                    "name": "first",
                    "model": model,
                    "prompt": "Describe {meta.subject} ({id}).",
                    "decoding": {"max_new_tokens": 5},
                },
                {
                    "name": "second",
                    "model": model,
                    "mode": "text",
                    "prompt": "Again: {stages.first}",
                    "decoding": {"max_new_tokens": 5},
                },
            ],
        }
    )
    recipe.run([str(manifest)], str(tmp_path / "run"), progress=False)
    prompts = {i: r.meta["recipe"]["prompt"] for i, r in stage_records(str(tmp_path / "run"), "first").items()}
    assert prompts == {"p0": "Describe a cat (p0).", "p1": "Describe a bus (p1)."}
    for record in read_records(str(tmp_path / "run")):
        assert record.caption == record.stages["first"]["caption"] != record.stages["second"]["caption"]
        assert record.mode == "caption"


def test_side_by_side_streams_and_equals_one_by_one(tmp_path, tiny_model, coco_photos):
    folder = tmp_path / "many"
    folder.mkdir()
    extra = sorted((SHARED_COCO / "val2017").glob("*.jpg"))[:24]
    for p in [*coco_photos, *extra][:36]:
        shutil.copy(p, folder / p.name)
    model = str(tiny_model("qwen2_vl"))
    spec = {
        "stages": [
            {"name": "first", "model": model, "batch_size": 1, "decoding": {"max_new_tokens": 12}},
            {
                "name": "second",
                "model": model,
                "batch_size": 1,
                "mode": "text",
                "prompt": "Shorten: {stages.first}",
                "decoding": {"max_new_tokens": 2},
            },
        ]
    }
    Recipe.from_dict({**spec, "side_by_side": False}).run([str(folder)], str(tmp_path / "one"), progress=False)
    summary = Recipe.from_dict({**spec, "side_by_side": True}).run(
        [str(folder)], str(tmp_path / "both"), progress=False
    )
    one_records = list(read_records(str(tmp_path / "one")))
    usable = sum(r.stages["first"]["status"] == "ok" for r in one_records)  # the others: left out of "second"
    second_session = summary["stages"]["second"]["session"]
    assert second_session["captioned"] + second_session["duplicates_copied"] == usable > 30  # equal texts: once
    one = {r.id: (r.caption, r.stages["first"]["caption"]) for r in one_records}
    both = {r.id: (r.caption, r.stages["first"]["caption"]) for r in read_records(str(tmp_path / "both"))}
    assert both == one and len(both) == len(list(folder.glob("*.jpg"))) > 32

    def shard_times(stage):
        shards = (tmp_path / "both" / "stages" / stage / "records").glob("part-*")
        return sorted(os.stat(s).st_mtime_ns for s in shards)

    first, second = shard_times("first"), shard_times("second")
    assert len(first) == 3  # 16 + 16 + the rest
    assert second[0] < first[-1]  # the second stage committed records before the first one ended
