"""`capmill train` and `capmill merge` end to end: the json-captioner recipe on a tiny Qwen3.5, then a faithful merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capmill.cli.main import main

pytest.importorskip("peft")
SCAFFOLD = Path(__file__).resolve().parents[1] / "models" / "data" / "scaffold_standin.jsonl"


def test_train_json_captioner_then_merge(tiny_model, chat_jsonl, tmp_path, capsys, coco_photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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

    # the merged folder records its profile, so inference picks it (constrained decoding needs json-captioner)
    merged = tmp_path / "merged"
    assert json.loads((merged / "capmill_merge.json").read_text())["profile"] == "json-captioner"
    assert main(["models", "--for", str(merged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "json-captioner"
    out = tmp_path / "structured.jsonl"
    caption = ["caption", str(coco_photos[0]), "--model", str(merged), "--scaffold", str(SCAFFOLD), "--constrained"]
    assert main([*caption, "--max-new-tokens", "24", "--out", str(out), "--quiet"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["profile"] == "json-captioner" and record["raw"].startswith("<tool_call>")

    # training the finished run again trains nothing and says so
    assert main(args[:-1]) == 0
    said = capsys.readouterr().out
    assert "holds a finished run (2 steps): nothing to train" in said and "trained 2 steps" not in said
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["already_finished"] and again["steps"] == 2


def test_merge_profile_is_checked_before_loading(tmp_path, capsys):
    argv = ["merge", str(tmp_path), "--base", "b", "--out", str(tmp_path / "m"), "--profile", "json-captoiner"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'json-captoiner'" in err and "did you mean 'json-captioner'?" in err


def test_cli_errors_are_typed_and_named(tmp_path, capsys):
    assert main(["train", "--base", "m", "--out", str(tmp_path / "r")]) == 2
    assert "stages" in capsys.readouterr().err
    assert main(["merge", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
