"""json-captioner on a tiny Qwen3.5: capmill's inputs and greedy output equal the card's snippet.

The scaffold is the stand-in file tests/models/data/scaffold_standin.jsonl (the real one is a hub download);
both sides read the same file, so the comparison is exact whatever the prompt says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fidelity_support import (
    MAX_NEW_TOKENS,
    assert_batch_is_padded_singles,
    assert_same_tensors,
    assert_singles_equal_card,
    batch_photos,
    capmill_encodings,
)

from capmill.captioner import Captioner

STANDIN = Path(__file__).parent / "data" / "scaffold_standin.jsonl"


def card_load(REPO: str):  # noqa: N803 - the card's name
    """The card's usage, loading part, verbatim but for float32 on "cpu" and the scaffold path."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(REPO)
    model = AutoModelForImageTextToText.from_pretrained(REPO, dtype=torch.float32, device_map="cpu").eval()
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token_id = processor.tokenizer.eos_token_id
    _p = STANDIN  # the card: hf_hub_download("AbstractPhil/json-coco-format", "data/task_1.jsonl", ...)
    with open(_p, encoding="utf-8") as f:
        scaffold = json.loads(f.readline())
    SYSTEM_PROMPT = scaffold["messages"][0]["content"]  # noqa: N806
    TOOLS = scaffold["tools"]  # noqa: N806
    return model, processor, SYSTEM_PROMPT, TOOLS


def card_caption(model, processor, SYSTEM_PROMPT, TOOLS, image_path=None, caption_text=None):  # noqa: N803
    """The card's usage, per-input part, verbatim but for max_new_tokens; text input drops the image block."""
    from PIL import Image

    if image_path is not None:
        image = Image.open(image_path).convert("RGB")
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "text", "text": "Extract the structured representation of what this image shows."},
                ],
            },
        ]
    else:  # "pass the prompt as the user text and drop the image content block"
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "text", "text": caption_text}]},
        ]
    inputs = processor.apply_chat_template(
        messages,
        tools=TOOLS,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        enable_thinking=False,
    ).to(model.device)
    out = model.generate(
        **inputs,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
        stop_strings=["</tool_call>"],
        tokenizer=processor.tokenizer,
    )
    text = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return inputs, text


@pytest.fixture(scope="module")
def card(tiny_model):
    path = str(tiny_model("qwen3_5"))
    return path, card_load(path)


@pytest.fixture(scope="module")
def structured(card, coco_photos):
    path, loaded = card
    photos = batch_photos(coco_photos)
    refs = [card_caption(*loaded, image_path=str(p)) for p in photos]
    cap = Captioner(model=path, profile="json-captioner", scaffold=STANDIN, decoding={"max_new_tokens": MAX_NEW_TOKENS})
    yield cap, photos, refs
    cap.close()


def test_inputs_equal_card_at_batch_1_and_8(structured):
    cap, photos, refs = structured
    singles, batch = capmill_encodings(cap, photos)
    assert_singles_equal_card(refs, singles, photos)
    assert_batch_is_padded_singles(batch, singles, ("pixel_values", "image_grid_thw"))


def test_greedy_output_equals_card_at_batch_1_and_in_batch_of_8(structured):
    cap, photos, refs = structured
    texts = [text for _, text in refs]
    assert len(set(texts)) > 1, "the tiny model must give different photos different outputs"
    single = cap.caption([photos[5]])[0]
    assert single.raw == texts[5]
    assert single.timings["prefix_tokens"] > 500  # batch 1 takes the scaffold prefix from the prefix store
    records = cap.caption(photos)
    assert [r.raw for r in records] == texts
    # one padded batch of 8 that still reuses the prefix (row_merge): rows from the prefix, one batched decode
    assert {(r.timings["batch_size"], r.timings["prefix_tokens"] > 500) for r in records} == {(8, True)}
    # without prefix reuse the eight mixed sizes go in one left-padded batch: still the card's text, row by row
    padded = Captioner(
        model=cap.model,
        profile="json-captioner",
        scaffold=STANDIN,
        decoding={"max_new_tokens": MAX_NEW_TOKENS},
        engine_options={"prefix_cache": False},
    )
    padded_records = padded.caption(photos)
    assert [r.raw for r in padded_records] == texts
    assert {r.timings["batch_size"] for r in padded_records} == {8}
    padded.close()
    # two photos of one size: an unpadded batch of 2 that reuses the prefix, still equal to the card
    same_size = cap.caption([photos[6], photos[7]])
    assert [r.raw for r in same_size] == texts[6:]
    assert {(r.timings["batch_size"], r.timings["prefix_tokens"] > 500) for r in same_size} == {(2, True)}
    # random weights write no tool call: the parser must say so, not invent a caption
    assert all(r.status == "invalid" and r.structured is None and r.error for r in records)


def test_text_mode_equals_card_text_input(card, coco_rows, tiny_model):
    path, loaded = card
    captions = [row["captions"][0] for row in coco_rows[:2]]
    refs = [card_caption(*loaded, caption_text=c) for c in captions]
    cap = Captioner(
        model=path,
        profile="json-captioner",
        mode="text",
        scaffold=STANDIN,
        decoding={"max_new_tokens": MAX_NEW_TOKENS},
    )
    from capmill.records import Item

    assert_same_tensors(
        refs[0][0], cap.family.encode(cap.processor(), [cap.prepare(Item("t", "t", "text", text=captions[0]))]), "text"
    )
    records = cap.caption(captions)
    assert [r.raw for r in records] == [t for _, t in refs]
    assert all(r.mode == "text" for r in records)
    cap.close()
