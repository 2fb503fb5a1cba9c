"""The named profiles: one per model card capmill is built around, plus `generic` for any Hugging Face image-text-to-text model.

Every value here is traceable to the card (see `source`); where a card leaves a choice open the default
follows the card and a decoding override changes it (docs/models.md).
"""

from __future__ import annotations

from capmill.models.profile import Profile
from capmill.records import Decoding
from capmill.registry import Registry

JSON_CAPTIONER = Profile(
    name="json-captioner",
    family="qwen3_5",
    default_model="AbstractPhil/Qwen3.5-0.8B-json-captioner",
    description="Qwen3.5-0.8B + task_1 LoRA: image or caption text -> fixed-schema structured caption (tool call)",
    prompt="Extract the structured representation of what this image shows.",
    decoding=Decoding(max_new_tokens=768, do_sample=False, stop=("</tool_call>",)),
    modes=("structured", "text"),
    default_mode="structured",
    output="tool_call",
    needs_scaffold=True,
    chat_kwargs={"enable_thinking": False},
    video=True,
    source="Qwen3.5-0.8B-json-captioner card: scaffold system prompt + tools, enable_thinking=False, greedy, </tool_call>, 768 tokens",
)

CAPRL_3B = Profile(
    name="caprl-3b",
    family="qwen2_5_vl",
    default_model="internlm/CapRL-3B",
    description="CapRL-3B (Qwen2.5-VL-3B, RL-tuned): dense detailed captions",
    prompt="Please describe this image in detail",
    system_prompt="You are a helpful assistant.",
    decoding=Decoding(max_new_tokens=2048, do_sample=True, temperature=1.0, top_p=1.0, repetition_penalty=1.0),
    video=True,
    source=(
        "CapRL-3B card: system 'You are a helpful assistant.', temperature 1.0, top_p 1.0, repetition_penalty 1.0; "
        "prompt and 2048 tokens from CapRL's own caption script; images resized as qwen_vl_utils does "
        "(Qwen2.5-VL inference approach)"
    ),
)

CAPRL_INTERNVL_8B = Profile(
    name="caprl-internvl-8b",
    family="internvl",
    default_model="internlm/CapRL-InternVL3.5-8B",
    aliases=("yuhangzang/CapRL-InternVL3.5-8B",),
    description="CapRL-InternVL3.5-8B: dense detailed captions, stronger and slower than CapRL-3B",
    prompt="Please describe this image in detail",
    system_prompt="You are a helpful assistant.",
    decoding=Decoding(max_new_tokens=2048, do_sample=True, temperature=1.0, top_p=1.0, repetition_penalty=1.0),
    source="CapRL-InternVL3.5-8B card: as CapRL-3B, through the InternVL-3.5 transformers (-HF) processor and chat template",
)

INKSCOPE_2B = Profile(
    name="inkscope-2b",
    family="qwen2_vl",
    default_model="prithivMLmods/Inkscope-Captions-2B-0526",
    description="Inkscope-Captions-2B (Qwen2-VL-2B): detailed captions; video",
    prompt="Generate a detailed caption for this image.",
    decoding=Decoding(max_new_tokens=128, do_sample=False),
    video=True,
    source="Inkscope-Captions-2B card: prompt, qwen_vl_utils.process_vision_info, 128 new tokens (checkpoint decodes top_k=1)",
)

BLIP2_LORA = Profile(
    name="blip2-lora",
    family="blip2",
    default_model="erayalp/blip2-flan-t5-xl-LoRA-image-captioning",
    description="BLIP-2 flan-t5-xl + LoRA: short captions",
    prompt="Provide a detailed caption for this photo.",
    decoding=Decoding(max_new_tokens=30, do_sample=False),
    source="blip2-flan-t5-xl-LoRA card: Blip2Processor/Blip2ForConditionalGeneration (the card names the BLIP-1 classes), 30 tokens",
)

GENERIC = Profile(
    name="generic",
    family=None,
    description="any Hugging Face image-text-to-text model with a chat template; set the prompt with --prompt",
    prompt="Describe this image.",
    decoding=Decoding(max_new_tokens=256, do_sample=False),
    source="capmill default: greedy, 256 tokens, the model's own chat template",
)

PROFILES: Registry[Profile] = Registry("profile")
for _profile in (JSON_CAPTIONER, CAPRL_3B, CAPRL_INTERNVL_8B, INKSCOPE_2B, BLIP2_LORA, GENERIC):
    PROFILES.register(_profile.name, _profile)


def get_profile(name: str) -> Profile:
    """The profile registered under `name` (UnknownNameError lists the choices)."""
    return PROFILES.get(name)


def all_profiles() -> list[Profile]:
    return [PROFILES.get(name) for name in PROFILES.names()]
