"""`--engine-option KEY=VALUE` and `--engine-config FILE.yaml`: parsed, merged, validated by the engine, and used."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from capmill.cli.caption import captioner_kwargs
from capmill.cli.engine_options import engine_options, parse_pairs, read_config
from capmill.cli.main import build_parser, main
from capmill.errors import ConfigError, EngineOptionError

COCO = Path(__file__).parents[1] / "data" / "coco"


def test_values_are_typed_as_json_where_they_parse():
    pairs = ["a=64", "b=true", "c=0.5", 'd={"image": 2}', "e=awq", "f=", "g=null", "h=[1, 2]", "i=a=b"]
    assert parse_pairs(pairs) == {
        "a": 64, "b": True, "c": 0.5, "d": {"image": 2}, "e": "awq", "f": "", "g": None, "h": [1, 2], "i": "a=b"
    }  # fmt: skip
    assert parse_pairs(["engine_args.swap_space=4", "engine_args.seed=1"]) == {
        "engine_args": {"swap_space": 4, "seed": 1}
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", ".a=1"])
def test_malformed_pairs_name_the_pair(bad):
    with pytest.raises(ConfigError, match="--engine-option"):
        parse_pairs([bad])


def test_a_key_given_a_value_cannot_hold_keys():
    with pytest.raises(ConfigError, match="cannot hold keys"):
        parse_pairs(["a=1", "a.b=2"])


def test_config_file_then_options_then_flags(tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text("max_num_seqs: 16\nengine_args:\n  swap_space: 2\n  seed: 3\nenforce_eager: false\n")
    args = argparse.Namespace(
        engine_config=str(config), engine_option=["enforce_eager=true", "engine_args.swap_space=4"]
    )
    got = engine_options(args, {"dtype": "float32", "device": None})
    assert got == {
        "max_num_seqs": 16, "enforce_eager": True, "engine_args": {"swap_space": 4, "seed": 3}, "dtype": "float32"
    }  # fmt: skip
    args.engine_option.append("dtype=bfloat16")
    with pytest.raises(ConfigError, match="disagree"):
        engine_options(args, {"dtype": "float32"})


@pytest.mark.parametrize(
    ("text", "match"), [("- a\n- b\n", "expected a mapping"), ("a: [1\n", "not valid YAML"), (None, "cannot read")]
)
def test_bad_config_files_name_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        read_config(str(path))
    assert str(path) in str(info.value)


def test_unknown_option_fails_before_any_work_and_lists_the_keys(tmp_path, capsys):
    argv = ["caption", str(COCO / "000000000139.jpg"), "--model", str(tmp_path / "nowhere"), "--profile",
            "inkscope-2b", "--engine-option", "atn_implementation=eager", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err  # the error, then what to do; no traceback
    assert "unknown option 'atn_implementation'" in err and "accepted options:" in err
    assert "attn_implementation" in err and "quantization" in err and "device_map" in err


def test_wrong_value_names_the_key_and_value(capsys):
    argv = ["caption", str(COCO / "000000000139.jpg"), "--engine", "openai", "--model", "m", "--profile",
            "inkscope-2b", "--engine-option", "concurrency=many", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "concurrency='many'" in err and "valid integer" in err and "max_retries" in err


def test_the_engine_gets_the_options(tiny_model, tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text("attn_implementation: eager\nmax_batch_size: 3\n")
    parser = build_parser()
    args = parser.parse_args(["caption", "x.jpg", "--model", str(tiny_model("qwen2_vl")), "--profile", "inkscope-2b",
                              "--engine-config", str(config), "--engine-option", "threads=1", "--device", "cpu"])  # fmt: skip
    kwargs = captioner_kwargs(args)
    assert kwargs["engine_options"] == {
        "attn_implementation": "eager",
        "max_batch_size": 3,
        "threads": 1,
        "device": "cpu",
    }
    from capmill.captioner import Captioner

    with Captioner(**kwargs) as cap:
        engine = cap.engine
        assert engine.attn_implementation == "eager"
        assert engine.model.config._attn_implementation == "eager"
        assert engine.options.max_batch_size == 3 and engine.options.threads == 1


def test_caption_runs_with_engine_options_end_to_end(tiny_model, tmp_path):
    out = tmp_path / "out.jsonl"
    photos = sorted(COCO.glob("*.jpg"))[:2]
    argv = ["caption", *map(str, photos), "--model", str(tiny_model("qwen2_vl")), "--profile", "inkscope-2b",
            "--max-new-tokens", "4", "--workers", "0", "--quiet", "--out", str(out),
            "--engine-option", "attn_implementation=eager", "--engine-option", "sort_by_length=false"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_serve_takes_the_same_flags(tmp_path):
    from capmill.cli.serve import config_from_args

    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "m", "--engine", "openai", "--engine-option", "concurrency=3",
                              "--engine-option", 'extra_headers={"X-Team": "a"}'])  # fmt: skip
    config = config_from_args(args)
    assert config.captioner_options["engine_options"] == {"concurrency": 3, "extra_headers": {"X-Team": "a"}}
    args = parser.parse_args(["serve", "--model", "m", "--engine-option", "prefix_cach=false"])
    with pytest.raises(EngineOptionError, match="prefix_cache"):
        config_from_args(args)


def test_eval_answerer_takes_options_and_a_config_file(tmp_path):
    from capmill.cli.eval_cmd import build_answerer

    config = tmp_path / "answerer.yaml"
    config.write_text("concurrency: 2\ntimeout: 12.5\n")
    parser = build_parser()
    args = parser.parse_args(["eval", "run", "--answerer", "m", "--answerer-config", str(config),
                              "--answerer-option", "max_retries=1", "--answerer-url", "http://127.0.0.1:9/v1"])  # fmt: skip
    engine = build_answerer(args)
    assert (engine.options.concurrency, engine.options.timeout, engine.options.max_retries) == (2, 12.5, 1)
    assert engine.base_url == "http://127.0.0.1:9/v1"
    args = parser.parse_args(["eval", "run", "--answerer", "m", "--answerer-option", "concurency=2"])
    with pytest.raises(EngineOptionError, match="concurrency"):
        build_answerer(args)
