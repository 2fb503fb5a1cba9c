"""`capmill train` and `capmill merge` end to end: the json-captioner recipe on a tiny Qwen3.5, then a faithful merge."""

from __future__ import annotations

import json

import pytest

from capmill.cli.main import main

pytest.importorskip("peft")


def test_train_json_captioner_then_merge(tiny_model, chat_jsonl, tmp_path, capsys):
    base = tiny_model("qwen3_5")
    run = tmp_path / "run"
    args = ["train", "--preset", "json-captioner", "--base", str(base), "--data", str(chat_jsonl), "--out", str(run)]
    args += [
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--set",
        "lora.r=4",
        "--set",
        "lora.alpha=8",
        "--no-progress",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["completed"] and summary["steps"] == 2 and summary["rejected_rows"] == 0
    stored = (run / "config.yaml").read_text()
    assert "preset: json-captioner" in stored and "warmup_ratio: 0.03" in stored and "seed: 42" in stored
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_dropout"] == 0.05 and adapter["base_model_name_or_path"] == str(base)

    assert main(["merge", str(run / "adapter"), "--out", str(tmp_path / "merged"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["passed"] and report["reloaded"] <= report["tolerance"]
    assert (tmp_path / "merged" / "chat_template.jinja").exists()


def test_cli_errors_are_typed_and_named(tmp_path, capsys):
    assert main(["train", "--base", "m", "--out", str(tmp_path / "r")]) == 2
    assert "stages" in capsys.readouterr().err
    assert main(["merge", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
