"""The training loop on tiny real models: overfitting, run-folder artifacts, curriculum, resume, bad rows."""

from __future__ import annotations

import csv
import json

import pytest

from capmill.errors import RunConflictError, TrainingError
from capmill.train.config import build_config
from capmill.train.trainer import train

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

SMALL_IMAGES = {"image_tokens": 16}  # 16 vision tokens per photo keeps CPU steps short


def config(base, out, data, **over):
    raw = {
        "base": str(base),
        "out": str(out),
        "stages": [{"name": "pairs", "data": [str(data)], "limit": 16, "max_steps": 8}],
        "learning_rate": 2e-2,
        "batch_size": 16,
        "micro_batch_size": 16,
        "warmup_ratio": 0.0,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "save_steps": 100,
    }
    raw.update(over)
    return build_config(raw)


def test_overfitting_16_examples_halves_the_loss(tiny_model, pairs_jsonl, tmp_path):
    base = tiny_model("qwen2_vl", **SMALL_IMAGES)
    result = train(config(base, tmp_path / "run", pairs_jsonl), progress=False)
    losses = result.losses
    assert result.completed and len(losses) == 8
    assert min(losses) <= losses[0] / 2, f"loss went {losses[0]:.3f} -> {min(losses):.3f}"
    run = result.run_dir
    rows = list(csv.DictReader(open(run / "loss.csv")))
    assert [int(r["global_step"]) for r in rows] == list(range(1, 9))
    assert float(rows[0]["loss"]) == pytest.approx(losses[0]) and int(rows[0]["tokens"]) > 16
    assert (run / "loss.png").stat().st_size > 1000 and any((run / "tensorboard").iterdir())
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["task_type"]) == (16, 32, "CAUSAL_LM")
    assert "visual" in adapter["target_modules"]  # excluded: the vision tower stays untouched
    assert (result.adapter_dir / "chat_template.jinja").exists()


def _adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_curriculum_resumes_exactly_where_it_stopped(tiny_model, pairs_jsonl, tmp_path):
    base = tiny_model("qwen2_vl", **SMALL_IMAGES)
    stages = [
        {"name": "bulk", "data": [str(pairs_jsonl)], "limit": 4, "max_steps": 2},
        {"name": "refine", "data": [str(pairs_jsonl)], "limit": 4, "max_steps": 2, "learning_rate": 5e-3},
    ]
    over = {
        "stages": stages,
        "batch_size": 2,
        "micro_batch_size": 1,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "save_steps": 1,
    }
    straight = train(config(base, tmp_path / "a", pairs_jsonl, **over), progress=False)
    first = train(config(base, tmp_path / "b", pairs_jsonl, **over), progress=False, stop_after=1)
    assert not first.completed and first.global_step == 1 and first.adapter_dir is None
    again = train(
        config(base, tmp_path / "b", pairs_jsonl, **over), progress=False, stop_after=2
    )  # at the stage boundary
    assert not again.completed and again.global_step == 2
    resumed = train(config(base, tmp_path / "b", pairs_jsonl, **over), progress=False)
    assert resumed.completed and resumed.global_step == 4
    a, b = _adapter_weights(straight.adapter_dir), _adapter_weights(resumed.adapter_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows = list(csv.DictReader(open(tmp_path / "b" / "loss.csv")))
    assert [(r["stage_name"], int(r["global_step"])) for r in rows] == [
        ("bulk", 1),
        ("bulk", 2),
        ("refine", 3),
        ("refine", 4),
    ]
    assert [float(r["loss"]) for r in rows] == pytest.approx(straight.losses, rel=1e-5)
    assert (tmp_path / "b" / "stages" / "00-bulk" / "adapter_model.safetensors").exists()
    # A finished run is not trained again; a different config in the same folder is refused.
    assert train(config(base, tmp_path / "b", pairs_jsonl, **over), progress=False).global_step == 4
    with pytest.raises(RunConflictError):
        train(config(base, tmp_path / "b", pairs_jsonl, **(over | {"learning_rate": 1e-3})), progress=False)


def test_bad_rows_are_logged_and_training_goes_on(tiny_model, pairs_jsonl, tmp_path, coco_rows):
    base = tiny_model("qwen2_vl", **SMALL_IMAGES)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [
        {"file": str(pairs_jsonl.parent / coco_rows[0]["file"]), "caption": "A kitchen."},
        {"file": "broken.jpg", "caption": "x"},
        {"file": "gone.jpg", "caption": "y"},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = train(
        config(base, tmp_path / "run", data, stages=[{"name": "s", "data": [str(data)], "max_steps": 1}]),
        progress=False,
    )
    assert result.completed and result.rejects == 2
    rejected = [json.loads(line) for line in open(tmp_path / "run" / "rejects-stage00.jsonl")]
    assert sorted(r["reason"].split(":")[0].split(" ")[0] for r in rejected) == ["image", "image"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(TrainingError, match="no usable rows"):
        train(config(base, tmp_path / "run2", empty, stages=[{"name": "s", "data": [str(empty)]}]), progress=False)


def test_blip2_recipe_trains_the_language_models_qkv_only(tiny_model, pairs_jsonl, tmp_path):
    base = tiny_model("blip2")
    raw = {
        "preset": "blip2-lora",
        "base": str(base),
        "out": str(tmp_path / "run"),
        "stages": [{"name": "captions", "data": [str(pairs_jsonl)], "limit": 8, "max_steps": 2}],
        "batch_size": 4,
        "grad_accumulation": 1,
        "learning_rate": 1e-3,
        "lora": {"r": 8, "alpha": 8},
    }
    result = train(build_config(raw), progress=False)
    assert result.completed and all(torch.isfinite(torch.tensor(result.losses)))
    from safetensors.torch import load_file

    names = list(load_file(str(result.adapter_dir / "adapter_model.safetensors")))
    assert names and all(".language_model." in n and n.split(".lora_")[0].rsplit(".", 1)[1] in "qkv" for n in names)
    assert any(".decoder." in n and "EncDecAttention" in n for n in names)
