"""Tiny models build offline, load through the Auto classes and generate input-dependent tokens from real photos."""

from __future__ import annotations

import pytest

from capmill.errors import ConfigError, UnknownNameError
from capmill.testing import ARCHS, build_tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILY_CLASS = {
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "blip2": "Blip2ForConditionalGeneration",
}
MAX_NEW = 10


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """(processor, model) per arch, loaded the way a real checkpoint is: AutoProcessor + AutoModelForImageTextToText."""
    cache = {}

    def get(arch):
        if arch not in cache:
            path = tiny_model(arch)
            processor = transformers.AutoProcessor.from_pretrained(path)
            model = transformers.AutoModelForImageTextToText.from_pretrained(path).eval()
            cache[arch] = (processor, model)
        return cache[arch]

    return get


def generate(processor, model, arch, photo, prompt, max_new_tokens=MAX_NEW):
    """Greedy continuation tokens for one photo and prompt, built as each card's usage code builds inputs."""
    from PIL import Image

    image = Image.open(photo).convert("RGB")
    if arch == "blip2":
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    else:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    if model.config.is_encoder_decoder or arch == "blip2":
        return out[0].tolist()
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_and_loads_with_family_class(arch, tiny_model):
    path = tiny_model(arch)
    assert (path / "config.json").exists() and (path / "capmill_tiny.json").exists()
    assert any(path.glob("*.safetensors"))
    cls = getattr(transformers, FAMILY_CLASS[arch])
    model = cls.from_pretrained(path)
    assert type(model).__name__ == FAMILY_CLASS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_output_depends_on_image_and_prompt(arch, loaded, coco_photos):
    processor, model = loaded(arch)
    base = generate(processor, model, arch, coco_photos[0], "Generate a detailed caption for this image.")
    other_image = generate(processor, model, arch, coco_photos[1], "Generate a detailed caption for this image.")
    other_word = generate(processor, model, arch, coco_photos[0], "Generate a short caption for this image.")
    assert base != other_image
    assert base != other_word
    # eos and pads never win, so generation runs to max_new_tokens (T5 starts with its decoder start token).
    assert len(base) == MAX_NEW + (1 if arch == "blip2" else 0)
    assert processor.tokenizer.eos_token_id not in base[1:]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_output_is_deterministic_across_loads(arch, tiny_model, loaded, coco_photos):
    processor, model = loaded(arch)
    again = transformers.AutoModelForImageTextToText.from_pretrained(tiny_model(arch)).eval()
    prompt = "Describe this image."
    assert generate(processor, model, arch, coco_photos[2], prompt) == generate(
        processor, again, arch, coco_photos[2], prompt
    )


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_5"])
def test_photo_becomes_a_few_dozen_vision_tokens(arch, loaded, coco_photos):
    processor, _ = loaded(arch)
    from PIL import Image

    image = Image.open(coco_photos[0]).convert("RGB")
    assert image.size[0] >= 480
    out = processor.image_processor(images=image, return_tensors="pt")
    t, h, w = out["image_grid_thw"][0].tolist()
    merged = t * h * w // processor.image_processor.merge_size**2
    assert 12 <= merged <= 48


def test_emit_eos_false_zeroes_special_logits(tiny_model):
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_model("qwen2_vl"))
    processor = transformers.AutoProcessor.from_pretrained(tiny_model("qwen2_vl"))
    head = model.get_output_embeddings().weight
    for token in ("<|im_end|>", "<|endoftext|>", "<|image_pad|>"):
        assert head[processor.tokenizer.convert_tokens_to_ids(token)].abs().sum() == 0
    assert head[processor.tokenizer.convert_tokens_to_ids("hello")].abs().sum() > 0


def test_sizes_are_adjustable(tmp_path):
    path = build_tiny_model("qwen2_vl", tmp_path / "m", hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2)
    config = transformers.AutoConfig.from_pretrained(path)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (128, 3)
    assert config.text_config.hidden_size // config.text_config.num_attention_heads >= 32


def test_bad_arch_and_bad_size_are_config_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="qwen9"):
        build_tiny_model("qwen9", tmp_path)
    with pytest.raises(ConfigError, match="hiden_size"):
        build_tiny_model("qwen2_vl", tmp_path, hiden_size=64)


def test_saved_chat_templates_are_the_shipped_ones(tiny_model):
    from capmill.testing.qwen import template

    for arch, name in [
        ("qwen3_5", "qwen3_5_small.jinja"),
        ("qwen2_vl", "qwen2_vl.jinja"),
        ("internvl", "internvl3_5.jinja"),
    ]:
        processor = transformers.AutoProcessor.from_pretrained(tiny_model(arch))
        assert processor.chat_template == template(name)
    blip = transformers.AutoProcessor.from_pretrained(tiny_model("blip2"))
    assert getattr(blip, "chat_template", None) is None


def test_qwen3_5_prompt_renders_tools_and_closed_think_block(tiny_model):
    processor = transformers.AutoProcessor.from_pretrained(tiny_model("qwen3_5"))
    tools = [{"type": "function", "function": {"name": "emit", "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "a dog on a sofa"}]
    text = processor.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert "\n\nBe exact.<|im_end|>\n<|im_start|>user\na dog on a sofa<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = processor.tokenizer(text).input_ids
    tok = processor.tokenizer
    assert ids[-4] == tok.convert_tokens_to_ids("<think>") and ids[-2] == tok.convert_tokens_to_ids("</think>")
