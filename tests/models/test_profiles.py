"""Profiles, profile and family inference, and the JSON captioner's scaffold loader."""

from __future__ import annotations

import json

import pytest

from capmill.errors import ConfigError, ModelLoadError, ScaffoldError, UnknownNameError
from capmill.models.catalog import PROFILES, get_profile
from capmill.models.resolve import family_of_config, profile_by_checkpoint_name, resolve_family, resolve_profile
from capmill.models.scaffold import load_scaffold, scaffold_from_row


def test_registry_has_the_five_seed_profiles_and_generic():
    assert set(PROFILES.names()) == {
        "json-captioner", "caprl-3b", "caprl-internvl-8b", "inkscope-2b", "blip2-lora", "generic"
    }  # fmt: skip
    with pytest.raises(UnknownNameError, match="json-captioner"):
        get_profile("nope")


def test_card_decoding_defaults():
    j = get_profile("json-captioner").decoding
    assert (j.do_sample, j.max_new_tokens, j.stop) == (False, 768, ("</tool_call>",))
    assert get_profile("json-captioner").chat_kwargs == {"enable_thinking": False}
    c = get_profile("caprl-3b").decoding
    assert (c.do_sample, c.temperature, c.top_p, c.repetition_penalty) == (True, 1.0, 1.0, 1.0)
    assert get_profile("inkscope-2b").decoding.max_new_tokens == 128
    assert get_profile("blip2-lora").decoding.max_new_tokens == 30


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("AbstractPhil/Qwen3.5-0.8B-json-captioner", "json-captioner"),
        ("/data/ckpt/qwen3.5-0.8b-json-captioner/", "json-captioner"),  # a local copy, named like the checkpoint
        ("internlm/CapRL-3B", "caprl-3b"),
        ("yuhangzang/CapRL-InternVL3.5-8B", "caprl-internvl-8b"),
        ("prithivMLmods/Inkscope-Captions-2B-0526", "inkscope-2b"),
        ("erayalp/blip2-flan-t5-xl-LoRA-image-captioning", "blip2-lora"),
        ("Qwen/Qwen2-VL-2B-Instruct", "generic"),
    ],
)
def test_profile_inferred_from_checkpoint_name(model, expected):
    assert resolve_profile(model).name == expected


def test_explicit_profile_overrides_inference():
    assert resolve_profile("internlm/CapRL-3B", "generic").name == "generic"
    assert profile_by_checkpoint_name("someone/else") is None


def test_family_from_a_local_folders_config(tiny_model):
    folder = str(tiny_model("qwen2_vl"))
    assert resolve_family(folder, get_profile("generic")) == "qwen2_vl"
    assert resolve_family(folder, get_profile("inkscope-2b")) == "qwen2_vl"
    with pytest.raises(ConfigError, match="blip2"):
        resolve_family(folder, get_profile("blip2-lora"))
    assert family_of_config({"model_type": "llava"}) == "generic"


def test_unreadable_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_family(str(tmp_path), get_profile("generic"))
    with pytest.raises(ModelLoadError, match="could not be fetched"):
        resolve_family("nobody/nothing-here", get_profile("generic"))
    # a profile that names its family still resolves offline (the engine checks again when loading)
    assert resolve_family("nobody/nothing-here", get_profile("inkscope-2b")) == "qwen2_vl"


def test_scaffold_from_file_row_and_plain_json(tmp_path):
    from capmill.schema import EMIT_CAPTION_TOOL

    row = {
        "messages": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "x"}],
        "tools": [EMIT_CAPTION_TOOL],
    }
    (tmp_path / "task_1.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({"messages": []}) + "\n")
    s = load_scaffold(tmp_path / "task_1.jsonl")
    assert (s.system_prompt, s.tools) == ("SYS", [EMIT_CAPTION_TOOL])
    (tmp_path / "plain.json").write_text(json.dumps({"system_prompt": "P"}, indent=2))
    plain = load_scaffold(tmp_path / "plain.json")
    assert plain.system_prompt == "P" and plain.tools == [EMIT_CAPTION_TOOL]  # tool from capmill.schema
    as_strings = scaffold_from_row(
        {"messages": json.dumps(row["messages"]), "tools": json.dumps([EMIT_CAPTION_TOOL])}, "x"
    )
    assert as_strings.tools == [EMIT_CAPTION_TOOL]
    assert s.hash != plain.hash


def test_scaffold_errors_say_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ScaffoldError, match="--scaffold PATH"):
        load_scaffold(None)
    with pytest.raises(ScaffoldError, match="does not exist"):
        load_scaffold(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(ScaffoldError, match="not a system message"):
        load_scaffold(tmp_path / "bad.jsonl")
    (tmp_path / "junk.jsonl").write_text("not json\n")
    with pytest.raises(ScaffoldError, match="not JSON"):
        load_scaffold(tmp_path / "junk.jsonl")


def test_standin_scaffold_is_labelled_and_uses_the_schema_tool():
    from pathlib import Path

    from capmill.schema import EMIT_CAPTION_TOOL

    s = load_scaffold(Path(__file__).parent / "data" / "scaffold_standin.jsonl")
    assert s.system_prompt.startswith("STAND-IN")
    assert s.tools == [EMIT_CAPTION_TOOL]


def test_json_captioner_without_scaffold_fails_at_once(tmp_path, monkeypatch, tiny_model):
    from capmill.captioner import Captioner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ScaffoldError, match="--scaffold"):
        Captioner(model=str(tiny_model("qwen3_5")), profile="json-captioner")


def test_mode_not_in_profile_is_a_config_error(tiny_model):
    from capmill.captioner import Captioner

    with pytest.raises(ConfigError, match="modes: caption"):
        Captioner(model=str(tiny_model("qwen2_vl")), profile="inkscope-2b", mode="structured")
