"""caprl-internvl-8b on a tiny InternVL: capmill equals "the exact same inference approach as
InternVL-3.5", i.e. the InternVL3.5 -HF transformers snippet with the CapRL card's messages (greedy)."""

from __future__ import annotations

import pytest
import torch
from fidelity_support import (
    MAX_NEW_TOKENS,
    assert_batch_is_padded_singles,
    assert_singles_equal_card,
    batch_photos,
    capmill_encodings,
)

from capmill.captioner import Captioner


def card_load(model_checkpoint: str):
    """InternVL3.5-HF's loading lines, float32 on "cpu"."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_device = "cpu"
    processor = AutoProcessor.from_pretrained(model_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(model_checkpoint, device_map=torch_device, dtype=torch.float32)
    return model, processor


def card_caption(model, processor, image_path: str):
    """InternVL3.5-HF's per-image lines with CapRL's system prompt and caption prompt."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image", "url": image_path},
                {"type": "text", "text": "Please describe this image in detail"},
            ],
        },
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device, dtype=torch.float32)
    generate_ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    decoded_output = processor.decode(generate_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return inputs, decoded_output


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    path = str(tiny_model("internvl"))
    photos = batch_photos(coco_photos)
    model, processor = card_load(path)
    refs = [card_caption(model, processor, str(p)) for p in photos]
    cap = Captioner(
        model=path, profile="caprl-internvl-8b", decoding={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    )
    yield cap, photos, refs
    cap.close()


def test_inputs_equal_card_at_batch_1_and_8(setup):
    cap, photos, refs = setup
    singles, batch = capmill_encodings(cap, photos)
    assert_singles_equal_card(refs, singles, photos)
    assert_batch_is_padded_singles(batch, singles, ("pixel_values",))


def test_greedy_output_equals_card_at_batch_1_and_in_batch_of_8(setup):
    cap, photos, refs = setup
    texts = [text for _, text in refs]
    assert len(set(texts)) > 1
    assert cap.caption([photos[4]])[0].raw == texts[4]
    assert [r.raw for r in cap.caption(photos)] == texts


def test_remote_code_checkpoint_gets_a_clear_error(tmp_path):
    from capmill.errors import ModelLoadError
    from capmill.models.families import get_family

    with pytest.raises(ModelLoadError, match="convert_internvl_weights_to_hf|--engine vllm"):
        get_family("internvl").check_config({"model_type": "internvl_chat"}, "internlm/CapRL-InternVL3.5-8B")
