"""blip2-lora on a tiny BLIP-2 (T5): capmill equals the card's snippet, with the Blip2 classes.

The card imports BlipProcessor/BlipForConditionalGeneration (BLIP-1 classes that cannot load BLIP-2) and uses
an undefined `images`; the reference does what it means: the Blip2 classes and `images = [img]`.
"""

from __future__ import annotations

import pytest
from fidelity_support import (
    MAX_NEW_TOKENS,
    assert_singles_equal_card,
    batch_photos,
    capmill_encodings,
)

from capmill.captioner import Captioner


def card_load(model_path: str):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(model_path)
    model = Blip2ForConditionalGeneration.from_pretrained(model_path).to("cpu")
    return model, processor


def card_caption(model, processor, image_path: str):
    from PIL import Image

    img = Image.open(image_path).convert("RGB")
    prompt = "Provide a detailed caption for this photo."
    images = [img]
    prompts = [prompt] * len(images)
    inputs = processor(images=img, text=prompts, return_tensors="pt").to("cpu")
    outputs = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    caption = processor.decode(outputs[0], skip_special_tokens=True)
    return inputs, caption


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    path = str(tiny_model("blip2"))
    photos = batch_photos(coco_photos)
    model, processor = card_load(path)
    refs = [card_caption(model, processor, str(p)) for p in photos]
    cap = Captioner(model=path, profile="blip2-lora", decoding={"max_new_tokens": MAX_NEW_TOKENS})
    yield cap, photos, refs
    cap.close()


def test_inputs_equal_card_at_batch_1_and_8(setup):
    import torch

    cap, photos, refs = setup
    singles, batch = capmill_encodings(cap, photos)
    assert_singles_equal_card(refs, singles, photos)
    for key in ("input_ids", "attention_mask", "pixel_values"):  # one prompt for all: no padding at all
        assert torch.equal(batch[key], torch.cat([s[key] for s in singles])), key


def test_greedy_output_equals_card_at_batch_1_and_in_batch_of_8(setup):
    cap, photos, refs = setup
    texts = [text for _, text in refs]
    assert len(set(texts)) > 1
    assert cap.caption([photos[1]])[0].raw == texts[1]
    records = cap.caption(photos)
    assert [r.raw for r in records] == texts
    assert all(r.tokens["completion"] > 0 for r in records)
