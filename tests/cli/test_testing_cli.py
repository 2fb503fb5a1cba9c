"""`capmill testing`: a tiny random-weight checkpoint folder and a stand-in scaffold, from the command line."""

from __future__ import annotations

import json

from capmill.cli.main import main


def test_build_model_with_sizes_and_its_hint(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert (
        main(["testing", "build-model", "qwen2_vl", str(out), "--size", "hidden_size=96", "--size", "vocab=small"]) == 0
    )
    said = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in said and f"--model {out} --profile inkscope-2b" in said
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert json.loads((out / "capmill_tiny.json").read_text())["sizes"]["hidden_size"] == 96
    assert main(["models", "--for", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "qwen2_vl"


def test_json_captioner_model_gets_a_loadable_stand_in_scaffold(tmp_path, capsys):
    from capmill.models.scaffold import load_scaffold
    from capmill.schema.tool import caption_tools

    assert main(["testing", "scaffold", str(tmp_path / "s.jsonl")]) == 0
    scaffold = load_scaffold(tmp_path / "s.jsonl")
    assert scaffold.system_prompt.startswith("STAND-IN SCAFFOLD") and scaffold.tools == caption_tools()


def test_bad_sizes_are_named(tmp_path, capsys):
    assert main(["testing", "build-model", "blip2", str(tmp_path / "b"), "--size", "hidden"]) == 2
    assert "--size 'hidden': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["testing", "build-model", "blip2", str(tmp_path / "b"), "--size", "hiden_size=3"]) == 2
    assert "unknown tiny-model size(s) ['hiden_size']" in capsys.readouterr().err
