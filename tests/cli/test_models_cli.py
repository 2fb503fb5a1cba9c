"""`capmill models`: the list, one profile, and which profile a checkpoint gets."""

from __future__ import annotations

import json

from capmill.cli.main import main


def test_lists_every_profile(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("json-captioner", "caprl-3b", "caprl-internvl-8b", "inkscope-2b", "blip2-lora", "generic"):
        assert name in out
    assert "stop ['</tool_call>']" in out and "sample t=1.0 top_p=1.0" in out


def test_json_and_one_profile(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"json-captioner", "generic"}
    assert main(["models", "blip2-lora", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decoding"]["max_new_tokens"] == 30


def test_unknown_profile_is_a_clear_error(capsys):
    assert main(["models", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_for_a_checkpoint(capsys, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--for", "internlm/CapRL-3B", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "model": "internlm/CapRL-3B", "profile": "caprl-3b", "family": "qwen2_5_vl"
    }  # fmt: skip
    folder = str(tiny_model("qwen2_vl"))
    assert main(["models", "--for", folder]) == 0
    assert "profile generic, family qwen2_vl" in capsys.readouterr().out
