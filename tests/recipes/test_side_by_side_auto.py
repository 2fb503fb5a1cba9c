"""`side_by_side: auto`: each stage's memory estimated from its weights before anything loads, and the stages run
side by side or one at a time by what is free (CAPMILL_AVAILABLE_MEMORY sets the free figure); same records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from safetensors import safe_open

from capmill.errors import ConfigError
from capmill.recipes import Recipe
from capmill.recipes.memory import ENV, MARGIN_BYTES, MARGIN_FRACTION, stage_memory, weight_bytes
from capmill.run.runfolder import read_records


def numel(folder):
    """The model's parameter count, read through safetensors' own reader."""
    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(f.get_tensor(k).numel() for k in f.keys())
    return total


def test_estimate_is_the_weights_in_the_dtype_they_load_in(tmp_path, tiny_model):
    model = tiny_model("qwen2_vl", dtype="bfloat16")  # stored in bf16, loaded on a CPU in float32
    params = numel(model)
    assert weight_bytes(str(model), None) == (params * 2, "safetensors headers")
    s = stage_memory("a", str(model), "transformers", {})
    assert (s.device, s.weight_bytes) == ("cpu", params * 4)
    assert s.estimate_bytes == params * 4 + int(params * 4 * MARGIN_FRACTION) + MARGIN_BYTES
    assert stage_memory("a", str(model), "transformers", {"dtype": "bfloat16"}).weight_bytes == params * 2

    from transformers import Qwen2VLForConditionalGeneration

    sharded = tmp_path / "sharded"  # an index and several shards: the same count
    shutil.copytree(model, sharded)
    (sharded / "model.safetensors").unlink()
    Qwen2VLForConditionalGeneration.from_pretrained(model).save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    assert stage_memory("a", str(sharded), "transformers", {"dtype": "float32"}).weight_bytes == params * 4


def test_quantized_kv_cache_and_hub_cache_estimates(tmp_path, tiny_model, monkeypatch):
    model = tiny_model("qwen2_vl")
    params = numel(model)
    assert stage_memory("a", str(model), "transformers", {"quantization": "nf4"}).weight_bytes == params // 2
    assert stage_memory("a", str(model), "transformers", {"quantization": "int8"}).weight_bytes == params
    kv = stage_memory("a", str(model), "vllm", {"device": "cpu", "kv_cache_memory_bytes": 1 << 30})
    assert kv.estimate_bytes == params * 4 + MARGIN_BYTES + (1 << 30)  # the cache it reserves, not a margin

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)  # the cache's own layout
    shutil.copytree(model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert stage_memory("a", "org/tiny", "transformers", {}).weight_bytes == params * 4
    assert stage_memory("a", "org/absent", "transformers", {}).estimate_bytes is None


def test_server_stage_counts_zero_and_unknown_model_is_one_at_a_time(tmp_path, tiny_model):
    from capmill.recipes.memory import choose

    remote = stage_memory("b", "some/model", "openai", {})
    assert (remote.device, remote.estimate_bytes) == ("remote", 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    unknown = stage_memory("c", str(empty), "transformers", {})
    assert unknown.estimate_bytes is None
    choice = choose([stage_memory("a", str(tiny_model("qwen2_vl")), "transformers", {}), unknown])
    assert not choice.chosen and "stage 'c'" in choice.reason and "no weight files" in choice.reason


def test_bad_available_memory_value_names_the_variable(monkeypatch, tiny_model):
    from capmill.recipes.memory import choose

    monkeypatch.setenv(ENV, "plenty")
    a = stage_memory("a", str(tiny_model("qwen2_vl")), "transformers", {})
    with pytest.raises(ConfigError, match=ENV):
        choose([a, a])


@pytest.fixture()
def photos(tmp_path, coco_photos):
    """The twelve photos and eight crops of them (tall, wide, small): 20 inputs, more than one 16-record shard."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos:
        shutil.copy(p, folder / p.name)
    for i, p in enumerate(coco_photos[:8]):
        with Image.open(p) as im:
            w, h = im.size
            box = (0, 0, w // (3 if i % 2 else 1), h // (1 if i % 2 else 4))  # tall, then wide strips
            im.crop(box).resize((max(8, box[2] // (i + 1)), max(8, box[3] // (i + 1)))).save(folder / f"crop{i}.jpg")
    return folder


def spec(tiny_model):
    return {
        "stages": [
            {"name": "first", "model": str(tiny_model("qwen2_vl")), "batch_size": 2, "decoding": {"max_new_tokens": 6}},
            {
                "name": "second",
                "model": str(tiny_model("qwen3_5")),
                "batch_size": 2,
                "mode": "text",
                "prompt": "Shorten: {stages.first}",
                "decoding": {"max_new_tokens": 4},
            },
        ]
    }


def shards(run_dir, stage):
    return sorted((run_dir / "stages" / stage / "records").glob("part-*"))


def test_auto_chooses_by_free_memory_and_records_are_the_same(tmp_path, tiny_model, photos, monkeypatch):
    recipe = Recipe.from_dict(spec(tiny_model))
    assert recipe.side_by_side == "auto"  # the default

    monkeypatch.setenv(ENV, "300M")  # less than two models' estimates (each at least the 256 MiB margin)
    short = recipe.run([str(photos)], str(tmp_path / "short"), progress=False)
    monkeypatch.setenv(ENV, "64G")
    ample = recipe.run([str(photos)], str(tmp_path / "ample"), progress=False)

    for run, summary in (("short", short), ("ample", ample)):  # what summary.json records
        assert json.loads((tmp_path / run / "summary.json").read_text())["side_by_side"] == summary["side_by_side"]
    s, a = short["side_by_side"], ample["side_by_side"]
    assert s["chosen"] is False and a["chosen"] is True
    assert s["available_bytes"] == 300 << 20 and a["available_bytes"] == 64 << 30
    assert s["estimate_bytes"] == a["estimate_bytes"] > 2 * MARGIN_BYTES
    assert "MiB" in s["reason"] and "on cpu" in s["reason"]
    assert [st["stage"] for st in a["stages"]] == ["first", "second"]
    # the way taken shows in the stage folders: side by side commits 16-record shards as it goes
    assert len(shards(tmp_path / "short", "first")) == 1 and len(shards(tmp_path / "ample", "first")) == 2

    def captions(run):
        return {r.id: (r.status, r.caption, r.stages["first"]["caption"]) for r in read_records(str(tmp_path / run))}

    assert captions("short") == captions("ample") and len(captions("short")) == 20

    again = recipe.run([str(photos)], str(tmp_path / "ample"), progress=False)  # nothing left: no models loaded
    assert again["side_by_side"]["chosen"] is False and again["side_by_side"]["reason"] == "every stage has finished"
    assert [s["session"]["captioned"] for s in again["stages"].values()] == [0, 0]
    grown = spec(tiny_model)
    grown["stages"].append({**grown["stages"][1], "name": "third", "prompt": "Again: {stages.second}"})
    third = Recipe.from_dict(grown).run([str(photos)], str(tmp_path / "ample"), progress=False)
    assert third["side_by_side"]["reason"] == "stage 'third' alone has work left"
    assert third["stages"]["third"]["session"]["captioned"] > 0


def test_true_and_false_override_the_estimate(tmp_path, tiny_model, photos, monkeypatch):
    monkeypatch.setenv(ENV, "1M")  # nothing fits, yet true runs them side by side
    forced = Recipe.from_dict({**spec(tiny_model), "side_by_side": True}).run(
        [str(photos)], str(tmp_path / "forced"), progress=False
    )
    assert forced["side_by_side"] == {
        "chosen": True,
        "reason": "side_by_side: true given",
        "estimate_bytes": None,
        "available_bytes": None,
    }
    assert len(shards(tmp_path / "forced", "first")) == 2
    monkeypatch.setenv(ENV, "64G")
    kept = Recipe.from_dict({**spec(tiny_model), "side_by_side": False}).run(
        [str(photos)],
        str(tmp_path / "kept"),
        progress=False,
        side_by_side="auto",  # the runner's setting wins
    )
    assert kept["side_by_side"]["chosen"] is True


def test_cli_says_the_choice_in_one_line(tmp_path, tiny_model, photos):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(spec(tiny_model)))
    for p in sorted(photos.glob("*.jpg"))[3:]:
        p.unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "capmill",
            "caption",
            str(photos),
            "--recipe",
            str(recipe),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, ENV: "200M"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "recipe stages" in line]
    assert len(lines) == 1 and "one at a time" in lines[0] and "200 MiB" in lines[0], proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["side_by_side"]["chosen"] is False
