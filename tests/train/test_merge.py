"""Merging: faithful merges publish a self-contained checkpoint; an altered or broken adapter fails the check."""

from __future__ import annotations

import json

import pytest

from capmill.errors import MergeFaithfulnessError
from capmill.train.merge import merge_adapter, verify_merged

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory, adapter_factory):
    return adapter_factory(tiny_model("qwen3_5"), tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="module")
def merged(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "model"
    return merge_adapter(adapter, out), out


def test_merge_is_faithful_in_memory_and_reloaded(merged, tiny_model):
    report, out = merged
    assert report.passed and report.base == str(tiny_model("qwen3_5"))
    assert report.in_memory <= report.tolerance and report.reloaded is not None and report.reloaded <= report.tolerance
    assert report.samples == 4  # two text-only prompts, two images
    assert json.loads((out / "capmill_merge.json").read_text())["passed"] is True


def test_merged_folder_loads_alone_and_captions(merged, coco_photos, tiny_model):
    from PIL import Image

    from capmill.testing.qwen import template

    _, out = merged
    assert not (out / "adapter_config.json").exists()  # a plain checkpoint, no peft needed
    processor = transformers.AutoProcessor.from_pretrained(out)
    model = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert processor.chat_template == template("qwen3_5_small.jinja")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.open(coco_photos[0]).convert("RGB")},
                {"type": "text", "text": "Describe."},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        enable_thinking=False,
    )
    merged_out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    base = transformers.AutoModelForImageTextToText.from_pretrained(tiny_model("qwen3_5")).eval()
    base_out = base.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert merged_out.shape[1] == inputs["input_ids"].shape[1] + 6
    assert not torch.equal(merged_out, base_out)  # the adapter changed the model


def test_altered_adapter_fails_the_check(adapter, merged, tiny_model, tmp_path, adapter_factory):
    _, good = merged
    assert verify_merged(good, adapter).passed
    altered = adapter_factory(tiny_model("qwen3_5"), tmp_path / "altered", seed=0)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(altered / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_B" in k and "down_proj" in k)
    weights[key] = weights[key] + 0.05 * torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(1))
    save_file(weights, str(altered / "adapter_model.safetensors"))
    out = merge_adapter(altered, tmp_path / "merged-altered").out  # faithful to the altered adapter itself...
    with pytest.raises(MergeFaithfulnessError, match="above the tolerance") as err:
        verify_merged(out, adapter)  # ...but not to the adapter it claims to be
    assert err.value.max_abs_diff > err.value.tolerance


def test_broken_adapter_publishes_nothing(adapter, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    weights = load_file(str(broken / "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_B" in k)
    weights[key][0, 0] = float("nan")
    save_file(weights, str(broken / "adapter_model.safetensors"))
    with pytest.raises(MergeFaithfulnessError):
        merge_adapter(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bfloat16_merge_of_an_oversized_adapter_fails(tiny_model, tmp_path, adapter_factory):
    big = adapter_factory(tiny_model("qwen3_5"), tmp_path / "big", scale=5.0)
    with pytest.raises(MergeFaithfulnessError, match="in memory"):
        merge_adapter(big, tmp_path / "out", dtype="bfloat16")
    assert not (tmp_path / "out").exists()


def test_blip2_merge(tiny_model, tmp_path, adapter_factory):
    lora = adapter_factory(tiny_model("blip2"), tmp_path / "lora")
    report = merge_adapter(lora, tmp_path / "merged")
    assert report.passed and report.samples == 2
    model = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert model.config.text_config.model_type == "t5"
