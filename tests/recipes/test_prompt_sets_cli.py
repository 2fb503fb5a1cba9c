"""Prompt sets through `capmill caption --recipe`: many captions per image, kohya sidecars, a reproducible pick."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml


def styles_recipe(path, model, choose):
    recipe = {
        "name": "styles",
        "stages": [
            {
                "name": "styles",
                "model": str(model),
                "decoding": {"max_new_tokens": 6},
                "prompt_set": {
                    "choose": choose,
                    "seed": 3,
                    "styles": {
                        "descriptive": "Write a descriptive caption of {filename} {length}.",
                        "tags": {"text": "Write booru tags {length}.", "weight": 2},
                    },
                    "lengths": {"short": "in a few words", "long": {"text": "in detail", "weight": 0.5}},
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def caption(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "capmill", "caption", *map(str, args), "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture()
def photos(tmp_path, coco_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos[4:7]:
        shutil.copy(p, folder / p.name)
    return folder


def test_all_styles_as_kohya_lines_and_files(tmp_path, tiny_model, photos):
    recipe = styles_recipe(tmp_path / "all.yaml", tiny_model("qwen2_vl"), "all")
    caption(
        photos, "--recipe", recipe, "--run-dir", tmp_path / "run", "--format", "sidecar", "--sidecar-captions", "lines"
    )
    records = [json.loads(line) for line in open(tmp_path / "run" / "records" / "part-00000.jsonl")]
    assert len(records) == 3
    order = ["descriptive.short", "descriptive.long", "tags.short", "tags.long"]
    for record in records:
        captions = record["captions"]
        assert list(captions) == order
        assert record["caption"] == captions["descriptive.short"]
        txt = (photos / (record["id"].rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".txt")).read_text()
        assert txt.splitlines() == [" ".join(c.split()) for c in captions.values()]
    stage = [json.loads(line) for line in open(tmp_path / "run" / "stages" / "styles" / "records" / "part-00000.jsonl")]
    assert len(stage) == 12 and {r["meta"]["recipe"]["variant"] for r in stage} == set(order)
    prompts = {r["meta"]["recipe"]["prompt"] for r in stage}
    assert any(p.startswith("Write a descriptive caption of 0000") and p.endswith(".jpg in detail.") for p in prompts)

    # the same run folder, sidecars as one file per variant: nothing is captioned again
    caption(
        photos, "--recipe", recipe, "--run-dir", tmp_path / "run", "--format", "sidecar", "--sidecar-captions", "files"
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["styles"]["session"]["captioned"] == 0
    for record in records:
        stem = photos / record["id"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        for variant, text in record["captions"].items():
            assert (stem.parent / f"{stem.name}.{variant}.txt").read_text() == text + "\n"


def test_random_pick_is_reproducible(tmp_path, tiny_model, photos):
    recipe = styles_recipe(tmp_path / "random.yaml", tiny_model("qwen2_vl"), "random")
    picks = []
    from capmill.run.runfolder import read_shard

    for out in ("a.jsonl", "b.parquet"):
        caption(photos, "--recipe", recipe, "--out", tmp_path / out)
        rows = [r.to_dict() for r in read_shard(str(tmp_path / out))]
        assert len(rows) == 3
        picks.append({r["id"]: r["stages"]["styles"]["variant"] for r in rows})
    assert picks[0] == picks[1]
    from capmill.recipes.prompt_sets import pick
    from capmill.recipes.spec import PromptSet

    prompt_set = PromptSet.model_validate(yaml.safe_load(recipe.read_text())["stages"][0]["prompt_set"])
    assert picks[0] == {i: pick(prompt_set, i).name for i in picks[0]}


def test_show_prompt_prints_each_stage(tmp_path, tiny_model, photos):
    recipe = tmp_path / "two.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"name": "a", "model": str(tiny_model("qwen2_vl")), "prompt": "Describe {stem}."},
                    {
                        "name": "b",
                        "model": str(tiny_model("qwen2_vl")),
                        "mode": "text",
                        "prompt": "Shorten: {stages.a}",
                    },
                ]
            }
        )
    )
    out = caption(photos, "--recipe", recipe, "--show-prompt").stdout
    first = sorted(photos.glob("*.jpg"))[0].stem
    assert out.splitlines() == [
        "--- stage a (caption) ---",
        f"Describe {first}.",
        "--- stage b (text) ---",
        "Shorten: <stages.a>",
    ]


def test_without_a_run_folder_records_go_to_stdout(tmp_path, tiny_model, coco_photos):
    recipe = styles_recipe(tmp_path / "one.yaml", tiny_model("qwen2_vl"), "random")
    out = caption(coco_photos[0], "--recipe", recipe).stdout
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["stages"]["styles"]["variant"] and record["caption"]
