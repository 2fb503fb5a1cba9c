"""inkscope-2b on a tiny Qwen2-VL: capmill's inputs and greedy output equal the card's snippet."""

from __future__ import annotations

import pytest
from fidelity_support import (
    MAX_NEW_TOKENS,
    assert_batch_is_padded_singles,
    assert_singles_equal_card,
    batch_photos,
    capmill_encodings,
)

from capmill.captioner import Captioner


def card_load(model_path: str):
    """The card's "How to Use", loading part, verbatim but for the model path and device."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    # Load the fine-tuned model
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_path, torch_dtype="auto", device_map="cpu")

    # Load processor
    processor = AutoProcessor.from_pretrained(model_path)
    return model, processor


def card_caption(model, processor, image_path: str):
    """The card's "How to Use", per-image part, verbatim but for the image, device "cpu" and max_new_tokens."""
    from qwen_vl_utils import process_vision_info

    # Sample input message with an image
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "image": image_path,
                },
                {"type": "text", "text": "Generate a detailed caption for this image."},
            ],
        }
    ]

    # Preprocess input
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, video_inputs = process_vision_info(messages)
    inputs = processor(
        text=[text],
        images=image_inputs,
        videos=video_inputs,
        padding=True,
        return_tensors="pt",
    ).to("cpu")

    # Generate output
    generated_ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    generated_ids_trimmed = [out_ids[len(in_ids) :] for in_ids, out_ids in zip(inputs.input_ids, generated_ids)]  # noqa: B905
    output_text = processor.batch_decode(
        generated_ids_trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return inputs, output_text[0]


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    path = str(tiny_model("qwen2_vl"))
    photos = batch_photos(coco_photos)
    model, processor = card_load(path)
    refs = [card_caption(model, processor, str(p)) for p in photos]
    cap = Captioner(model=path, profile="inkscope-2b", decoding={"max_new_tokens": MAX_NEW_TOKENS}, batch_size=8)
    yield cap, photos, refs
    cap.close()


def test_inputs_equal_card_at_batch_1_and_8(setup):
    cap, photos, refs = setup
    singles, batch = capmill_encodings(cap, photos)
    assert_singles_equal_card(refs, singles, photos)
    assert_batch_is_padded_singles(batch, singles, ("pixel_values", "image_grid_thw"))


def test_greedy_output_equals_card_at_batch_1_and_in_batch_of_8(setup):
    cap, photos, refs = setup
    texts = [text for _, text in refs]
    assert len(set(texts)) > 1, "the tiny model must give different photos different captions"
    single = cap.caption([photos[3]])[0]
    assert single.raw == texts[3]
    records = cap.caption(photos)
    assert [r.raw for r in records] == texts
    assert all(r.status == "ok" and r.tokens["completion"] > 0 for r in records)
    assert {r.timings["batch_size"] for r in records} == {8}
