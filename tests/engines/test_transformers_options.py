"""The transformers engine's loading options on real tiny models: bitsandbytes quantization (vision tower, projector
and output head kept in full precision), device_map, torch_compile, and the option errors."""

from __future__ import annotations

import importlib.util

import pytest

from capmill.captioner import Captioner
from capmill.engines.transformers_loading import QUANTIZATION_SKIP, TransformersOptions
from capmill.errors import EngineOptionError, MissingDependencyError

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs capmill[quant]")
BASE = {"device": "cpu", "threads": 2}


def _linear_kinds(model) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules() if "Linear" in type(m).__name__}


def _captioner(path, profile, **options):
    return Captioner(
        model=str(path), profile=profile, engine_options={**BASE, **options}, decoding={"max_new_tokens": 4}
    )


@needs_bnb
@pytest.mark.parametrize(("quantization", "layer"), [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_language_model_full_precision_vision(tiny_model, coco_photos, quantization, layer):
    """bitsandbytes on the CPU (bitsandbytes >= 0.46 has CPU kernels): every language-model Linear is quantized;
    the vision tower, its merger/projector and lm_head keep the checkpoint's weights bit for bit; captions run."""
    import torch

    path = tiny_model("qwen2_vl")
    with _captioner(path, "inkscope-2b") as plain, _captioner(path, "inkscope-2b", quantization=quantization) as quant:
        kinds = _linear_kinds(quant.engine.model)
        language = {n: k for n, k in kinds.items() if ".language_model." in n}
        vision = {n: k for n, k in kinds.items() if ".visual." in n}
        assert language and set(language.values()) == {layer}
        assert vision and set(vision.values()) == {"Linear"} and kinds["lm_head"] == "Linear"
        assert any(".merger." in n for n in vision)  # the projector of Qwen2-VL
        reference = dict(plain.engine.model.named_parameters())
        for name, param in quant.engine.model.named_parameters():
            if ".visual." in name or name.startswith("lm_head"):
                assert torch.equal(param.detach(), reference[name].detach()), name
        records = quant.caption([str(p) for p in coco_photos[:2]])
    assert [r.status for r in records] == ["ok", "ok"] and all(r.caption for r in records)


@needs_bnb
def test_internvl_keeps_its_vision_tower_and_projector(tiny_model):
    path = tiny_model("internvl")
    with _captioner(path, "caprl-internvl-8b", quantization="nf4") as cap:
        kinds = _linear_kinds(cap.engine.model)
    kept = {n: k for n, k in kinds.items() if "vision_tower" in n or "multi_modal_projector" in n}
    assert kept and set(kept.values()) == {"Linear"}
    assert {k for n, k in kinds.items() if "language_model" in n} == {"Linear4bit"}


def test_quantization_without_bitsandbytes_names_the_extra(tiny_model, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with (
        pytest.raises(MissingDependencyError, match=r"capmill\[quant\]"),
        _captioner(tiny_model("qwen2_vl"), "inkscope-2b", quantization="nf4") as cap,
    ):
        _ = cap.engine


def test_skip_list_covers_the_seed_families():
    import re

    boundary = r"(?:(?<=\.)|(?=\.|$))"  # transformers' should_convert_module matching (5.x)

    def skipped(name):
        return any(re.match(rf"(?:{p}){boundary}", name) or name.endswith(p) for p in QUANTIZATION_SKIP)

    for name in ["model.visual.blocks.0.attn.qkv", "model.visual.merger.mlp.0", "model.vision_tower.encoder.layer.0",
                 "model.multi_modal_projector.linear_1", "vision_model.encoder.layers.0.mlp.fc1", "mlp1.1",
                 "qformer.encoder.layer.0.attention.query", "language_projection", "lm_head"]:  # fmt: skip
        assert skipped(name), name
    for name in ["model.language_model.layers.0.mlp.gate_proj", "model.language_model.layers.3.self_attn.q_proj",
                 "language_model.model.layers.0.mlp.down_proj"]:  # fmt: skip
        assert not skipped(name), name


def test_device_map_places_the_model_and_gives_the_same_captions(tiny_model, coco_photos, tmp_path):
    """A device map that splits the model (here: the language model offloaded to disk, as accelerate does when a
    model is larger than the GPUs) runs through accelerate's hooks and gives the plain engine's captions."""
    path = tiny_model("qwen2_vl")
    photos = [str(p) for p in coco_photos[:3]]
    device_map = {"model.visual": "cpu", "model.language_model": "disk", "lm_head": "cpu"}
    split = {"device_map": device_map, "load_kwargs": {"offload_folder": str(tmp_path)}}
    with _captioner(path, "inkscope-2b") as plain, _captioner(path, "inkscope-2b", **split) as mapped:
        expected = [r.caption for r in plain.caption(photos)]
        assert [r.caption for r in mapped.caption(photos)] == expected
        assert mapped.engine.model.hf_device_map == device_map


def test_torch_compile_wraps_the_model(tiny_model):
    """The option reaches the model (compiled on first call). Generating under compile is not run here: inductor
    on this CPU took 204 s for the tiny model (same caption as eager); docs/gpu.md says so."""
    with _captioner(tiny_model("qwen2_vl"), "inkscope-2b", torch_compile=True) as cap:
        assert cap.engine.model._compiled_call_impl is not None


def test_unknown_or_wrong_options_list_the_accepted_keys():
    with pytest.raises(EngineOptionError) as info:
        TransformersOptions.checked("transformers", {"quantisation": "nf4"})
    assert "unknown option 'quantisation'" in str(info.value)
    for key in ("attn_implementation", "device_map", "torch_compile", "quantization", "load_kwargs"):
        assert key in str(info.value)
    with pytest.raises(EngineOptionError, match=r"quantization='4bit'"):
        TransformersOptions.checked("transformers", {"quantization": "4bit"})
