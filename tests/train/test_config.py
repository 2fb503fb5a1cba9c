"""Training configs: the seed recipes as presets, validation errors that name the field, YAML and flags."""

from __future__ import annotations

import pytest

from capmill.cli.main import build_parser
from capmill.cli.train import overrides, with_stage_lengths
from capmill.errors import ConfigError
from capmill.train.config import build_config, load_config

STAGE = [{"name": "s", "data": ["x.jsonl"]}]


def test_json_captioner_preset_is_seed_000():
    c = build_config({"preset": "json-captioner", "base": "Qwen/Qwen3.5-0.8B", "out": "run", "stages": STAGE})
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.bias) == (32, 64, 0.05, "none")
    assert c.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (c.learning_rate, c.lr_scheduler, c.warmup_ratio) == (1e-4, "cosine", 0.03)
    assert (c.batch_size, c.grad_accumulation, c.max_length, c.seed, c.precision) == (16, 1, 2048, 42, "auto")
    assert c.lora.language_only and not c.lora.use_rslora and not c.lora.use_dora
    assert c.stages[0].epochs == 1


def test_blip2_preset_is_seed_004():
    c = build_config({"preset": "blip2-lora", "base": "Salesforce/blip2-flan-t5-xl", "out": "run", "stages": STAGE})
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.target_modules) == (128, 128, 0.05, ["q", "k", "v"])
    assert (c.learning_rate, c.lr_scheduler, c.batch_size, c.grad_accumulation) == (3e-5, "cosine", 32, 2)
    assert c.stages[0].epochs == 4


def test_two_stage_curriculum_keeps_per_stage_settings():
    stages = [
        {"name": "bulk", "data": ["cc.jsonl"], "where": {"grounded": True}},
        {"name": "refine", "data": ["gold.jsonl"], "epochs": 2},
    ]
    c = build_config({"preset": "json-captioner", "base": "b", "out": "o", "stages": stages})
    assert [(s.name, s.epochs, s.where) for s in c.stages] == [("bulk", 1, {"grounded": True}), ("refine", 2, {})]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"base": "b", "out": "o", "stages": STAGE, "lora": {"r": 0}}, "lora.r"),
        ({"base": "b", "out": "o", "stages": STAGE, "learning_rat": 1}, "learning_rat"),
        ({"base": "b", "out": "o", "stages": []}, "stages"),
        ({"out": "o", "stages": STAGE}, "base"),
        ({"base": "b", "out": "o", "stages": STAGE, "batch_size": 16, "micro_batch_size": 5}, "micro_batch_size"),
        ({"preset": "nope", "base": "b", "out": "o", "stages": STAGE}, "nope"),
    ],
)
def test_bad_config_fails_at_once_naming_the_field(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(raw)


def test_yaml_paths_resolve_next_to_the_file_and_flags_override(tmp_path):
    (tmp_path / "gold.jsonl").write_text("{}\n")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "preset: json-captioner\nbase: m\nout: run\nstages:\n  - name: refine\n    data: [gold.jsonl]\n    epochs: 2\n"
    )
    args = build_parser().parse_args(["train", str(cfg), "--lr", "5e-5", "--set", "lora.r=8", "--max-steps", "3"])
    c = with_stage_lengths(load_config(args.config, overrides(args)), args.epochs, args.max_steps)
    assert c.stages[0].data == [str(tmp_path / "gold.jsonl")]
    assert (c.learning_rate, c.lora.r, c.lora.alpha, c.stages[0].max_steps, c.stages[0].epochs) == (5e-5, 8, 64, 3, 2)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
