"""RepetitionStop ends a looping row during decoding, on a real tiny model's own `generate`."""

from __future__ import annotations

import pytest
import torch

from capmill.quality.repetition import RepetitionSettings, add_repetition_stop, looping
from capmill.records import Decoding, Request


def test_looping_tails():
    s = RepetitionSettings(max_ngram=4, min_repeats=3, single_token_repeats=5)
    assert looping(torch.tensor([9, 1, 2, 1, 2, 1, 2]), s)
    assert not looping(torch.tensor([1, 2, 1, 2, 3]), s)
    assert looping(torch.tensor([4, 7, 7, 7, 7, 7]), s)
    assert not looping(torch.tensor([7, 7, 7, 7]), s)


def test_no_request_asking_leaves_the_kwargs_alone():
    kwargs = {"max_new_tokens": 8}
    plain = [Request(item_id="a", messages=[], decoding=Decoding())]
    assert add_repetition_stop(kwargs, plain, 10) is kwargs


@pytest.fixture(scope="module")
def model_and_inputs(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model("qwen2_vl")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    tokenizer.padding_side = "left"
    prompts = ["a photo of", "the quick brown fox jumps over", "Client law law", "an image showing two dogs"]
    return model, tokenizer(prompts, return_tensors="pt", padding=True)


def test_a_looping_row_stops_early_and_keeps_a_prefix_of_its_unstopped_output(model_and_inputs):
    model, inputs = model_and_inputs
    settings = RepetitionSettings(max_ngram=8, min_repeats=3, single_token_repeats=4)
    asked = {"max_ngram": 8, "min_repeats": 3, "single_token_repeats": 4}
    requests = [Request(item_id=str(i), messages=[], decoding=Decoding(), stop_repetition=asked) for i in range(4)]
    requests[1].stop_repetition = None  # this row did not ask: it runs its whole budget
    base = {"max_new_tokens": 64, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        full = model.generate(**inputs, **base)
        kwargs = add_repetition_stop(dict(base), requests, inputs["input_ids"].shape[1])
        stopped = model.generate(**inputs, **kwargs)
    start = inputs["input_ids"].shape[1]
    criterion = kwargs["stopping_criteria"][0]
    assert criterion.stopped, "the tiny model should loop on at least one prompt within 64 tokens"
    for row in range(4):
        ours, theirs = stopped[row, start:], full[row, start:]
        if row in criterion.stopped:
            cut = int((ours != 0).sum()) if (ours == 0).any() else len(ours)
            assert cut < 64 and torch.equal(ours[:cut], theirs[:cut])  # the same tokens, ended early
            assert looping(ours[:cut], settings)
        else:
            assert torch.equal(ours[: len(theirs)], theirs)
    assert 1 not in criterion.stopped
