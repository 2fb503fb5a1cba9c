"""Label masks checked token by token against each model's own chat template: loss on assistant tokens only."""

from __future__ import annotations

import json

import pytest

from capmill.schema import StructuredCaption, render_tool_call
from capmill.train.data import Example, RowError, load_examples
from capmill.train.masking import IGNORE, Encoder, collate

transformers = pytest.importorskip("transformers")


def processor_of(tiny_model, arch):
    return transformers.AutoProcessor.from_pretrained(tiny_model(arch))


def split(enc):
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    first = next(i for i, v in enumerate(labels) if v != IGNORE)
    return ids, labels, first


def test_json_captioner_rows_mask_everything_but_the_tool_call(tiny_model, chat_jsonl):
    processor = processor_of(tiny_model, "qwen3_5")
    tok = processor.tokenizer
    row = json.loads(chat_jsonl.read_text().splitlines()[3])
    ex = load_examples([str(chat_jsonl)], limit=4)[0][3]
    enc = Encoder(processor, max_length=4096)(ex)
    ids, labels, first = split(enc)

    # The prompt is exactly what the model sees at inference (tools, system, user, empty think block) and is masked.
    prompt = processor.apply_chat_template(
        row["messages"][:2], tools=row["tools"], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert first == len(prompt_ids) and ids[:first] == prompt_ids
    assert all(v == IGNORE for v in labels[:first])

    # Every later token is labelled with itself: the tool call and the end of turn.
    args = json.loads(row["messages"][2]["tool_calls"][0]["function"]["arguments"])
    call = render_tool_call(StructuredCaption.model_validate(args))
    assert labels[first:] == ids[first:]
    assert ids[first:] == tok(call + "<|im_end|>\n", add_special_tokens=False).input_ids
    assert tok.decode(ids[first:]) == call + "<|im_end|>\n"

    # render_tool_call writes the same text the chat template writes for the dataset's own tool call.
    own = [
        *row["messages"][:2],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "emit_caption_schema", "arguments": args}}],
        },
    ]
    template_text = processor.apply_chat_template(own, tools=row["tools"], tokenize=False, enable_thinking=False)
    assert tok.decode(ids) == template_text


def test_image_caption_pair_masks_image_and_prompt(tiny_model, pairs_jsonl):
    processor = processor_of(tiny_model, "qwen2_vl")
    tok = processor.tokenizer
    ex = load_examples([str(pairs_jsonl)], limit=1)[0][0]
    enc = Encoder(processor, max_length=4096)(ex)
    ids, labels, first = split(enc)
    from PIL import Image

    prompt = processor.apply_chat_template(ex.messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = processor(text=[prompt], images=[Image.open(ex.images[0]).convert("RGB")], return_tensors="pt")[
        "input_ids"
    ][0].tolist()
    assert ids[:first] == prompt_ids and prompt_ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) > 10
    caption = ex.messages[-1]["content"]
    assert labels[first:] == ids[first:] == tok(caption + "<|im_end|>\n", add_special_tokens=False).input_ids
    assert enc["pixel_values"].shape[0] > 0 and enc["image_grid_thw"].shape == (1, 3)


def test_every_assistant_turn_of_a_conversation_is_labelled(tiny_model, pairs_jsonl):
    processor = processor_of(tiny_model, "qwen2_vl")
    tok = processor.tokenizer
    ex = load_examples([str(pairs_jsonl)], limit=1)[0][0]
    ex.messages += [
        {"role": "user", "content": "Shorter, please."},
        {"role": "assistant", "content": "A pizza kitchen."},
    ]
    enc = Encoder(processor, max_length=4096)(ex)
    ids, labels = enc["input_ids"].tolist(), enc["labels"].tolist()
    kept = [i for i, v in enumerate(labels) if v != IGNORE]
    spans = tok.decode([ids[i] for i in kept])
    assert spans == ex.messages[1]["content"] + "<|im_end|>\n" + "A pizza kitchen.<|im_end|>\n"
    masked = tok.decode([t for t, v in zip(ids, labels, strict=True) if v == IGNORE])
    assert "Shorter, please." in masked and "Generate" not in spans


def test_blip2_labels_are_the_caption_with_eos(tiny_model, pairs_jsonl):
    processor = processor_of(tiny_model, "blip2")
    ex = load_examples([str(pairs_jsonl)], limit=1, prompt="Provide a detailed caption for this photo.")[0][0]
    enc = Encoder(processor, max_length=512)(ex)
    caption = ex.messages[-1]["content"]
    assert enc["labels"].tolist() == processor.tokenizer(caption).input_ids
    assert enc["labels"][-1] == processor.tokenizer.eos_token_id
    assert (enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum() == 8


def test_too_long_rows_are_rejected_not_truncated(tiny_model, chat_jsonl):
    processor = processor_of(tiny_model, "qwen3_5")
    ex = load_examples([str(chat_jsonl)], limit=1)[0][0]
    with pytest.raises(RowError, match="longer than max_length 64"):
        Encoder(processor, max_length=64)(ex)


def test_collate_right_pads_and_concatenates_pixels(tiny_model, pairs_jsonl):
    processor = processor_of(tiny_model, "qwen2_vl")
    exs = load_examples([str(pairs_jsonl)], limit=2)[0]
    exs[1] = Example(
        messages=exs[1].messages[:-1] + [{"role": "assistant", "content": "x"}], source="s", images=exs[1].images
    )
    rows = [Encoder(processor, max_length=4096)(e) for e in exs]
    batch = collate(rows, processor.tokenizer.pad_token_id)
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(n0, n1)) and n0 > n1
    assert (batch["labels"][1, n1:] == IGNORE).all() and (batch["attention_mask"][1, n1:] == 0).all()
    assert batch["pixel_values"].shape[0] == rows[0]["pixel_values"].shape[0] + rows[1]["pixel_values"].shape[0]
