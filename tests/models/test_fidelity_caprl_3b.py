"""caprl-3b on a tiny Qwen2.5-VL: capmill equals "the exact same inference approach as Qwen2.5-VL".

The card shows only a vLLM OpenAI call (system "You are a helpful assistant.", temperature 1.0, top_p 1.0,
repetition_penalty 1.0) and points to the Qwen2.5-VL transformers recipe; the reference below is that recipe
with the card's messages and CapRL's caption prompt. Fidelity is checked greedy; a seeded test checks that
the card's sampling defaults are what reaches `generate`.
"""

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

CARD_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0}


def card_load(model_path: str):
    """The Qwen2.5-VL README's loading lines, for the model path on "cpu"."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, torch_dtype="auto", device_map="cpu")
    processor = AutoProcessor.from_pretrained(model_path)
    return model, processor


def card_caption(model, processor, image_path: str, **generate_kwargs):
    """The Qwen2.5-VL README's per-image lines with CapRL's messages."""
    from qwen_vl_utils import process_vision_info

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image_path},
                {"type": "text", "text": "Please describe this image in detail"},
            ],
        },
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, video_inputs = process_vision_info(messages)
    inputs = processor(text=[text], images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")
    inputs = inputs.to("cpu")
    generated_ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, **generate_kwargs)
    generated_ids_trimmed = [out_ids[len(in_ids) :] for in_ids, out_ids in zip(inputs.input_ids, generated_ids)]  # noqa: B905
    output_text = processor.batch_decode(
        generated_ids_trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return inputs, output_text[0]


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    path = str(tiny_model("qwen2_5_vl"))
    photos = batch_photos(coco_photos)
    model, processor = card_load(path)
    refs = [card_caption(model, processor, str(p), do_sample=False) for p in photos]
    greedy = Captioner(model=path, profile="caprl-3b", decoding={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False})
    yield path, (model, processor), greedy, photos, refs
    greedy.close()


def test_inputs_equal_card_at_batch_1_and_8(setup):
    _, _, cap, photos, refs = setup
    singles, batch = capmill_encodings(cap, photos)
    assert_singles_equal_card(refs, singles, photos)
    assert_batch_is_padded_singles(batch, singles, ("pixel_values", "image_grid_thw"))


def test_greedy_output_equals_card_at_batch_1_and_in_batch_of_8(setup):
    _, _, cap, photos, refs = setup
    texts = [text for _, text in refs]
    assert len(set(texts)) > 1
    assert cap.caption([photos[0]])[0].raw == texts[0]
    assert [r.raw for r in cap.caption(photos)] == texts


def test_default_decoding_is_the_cards_sampling(setup):
    path, (model, processor), _, photos, _ = setup
    cap = Captioner(model=path, profile="caprl-3b", decoding={"max_new_tokens": MAX_NEW_TOKENS, "seed": 1234})
    settings = cap.settings()["decoding"]
    assert settings["do_sample"] is True and settings["temperature"] == 1.0 and settings["top_p"] == 1.0
    assert settings["repetition_penalty"] == 1.0
    record = cap.caption([photos[2]])[0]
    torch.manual_seed(1234)
    _, sampled = card_caption(model, processor, str(photos[2]), **CARD_SAMPLING)
    assert record.raw == sampled
    _, greedy = card_caption(model, processor, str(photos[2]), do_sample=False)
    assert sampled != greedy, "sampling at temperature 1.0 should leave the greedy path on a random model"
    cap.close()
