"""Prefix reuse on the real tiny Qwen3.5 (attention KV + gated-DeltaNet conv/recurrent state): same output as the card.

The json-captioner's scaffold (system prompt + tools) is computed once and copied into every batch; the greedy
text of every photo must stay exactly the card's own one-image-per-generate output, with and without the reuse.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from capmill.captioner import Captioner
from capmill.engines.prefix_cache import equal_length_batches, repeat_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import test_fidelity_json_captioner as card  # noqa: E402 - the card's snippet, written once in tests/models
from fidelity_support import MAX_NEW_TOKENS, batch_photos  # noqa: E402


def test_equal_length_batches_never_mix_lengths_and_keep_every_index():
    lengths = {0: 5, 1: 7, 2: 5, 3: 5, 4: 7, 5: 9, 6: 5}
    batches = equal_length_batches(list(lengths), lengths, size=2)
    assert sorted(i for b in batches for i in b) == list(lengths)
    assert all(len({lengths[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert [len(b) for b in batches] == [2, 2, 2, 1]  # 5,5 | 5,5 | 7,7 | 9


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    path = str(tiny_model("qwen3_5"))
    loaded = card.card_load(path)
    photos = batch_photos(coco_photos)
    refs = [card.card_caption(*loaded, image_path=str(p))[1] for p in photos]
    return path, photos, refs


def _captioner(path: str, **engine_options) -> Captioner:
    return Captioner(
        model=path,
        profile="json-captioner",
        scaffold=card.STANDIN,
        decoding={"max_new_tokens": MAX_NEW_TOKENS},
        batch_size=8,
        engine_options=engine_options,
    )


def test_prefix_reuse_gives_the_cards_output_in_every_batch(setup):
    path, photos, refs = setup
    assert len(set(refs)) > 1, "the tiny model must give different photos different outputs"
    cap = _captioner(path)
    records = cap.caption(photos)
    assert [r.raw for r in records] == refs
    # every batch is unpadded (cut at length boundaries) and starts from the stored scaffold state
    assert all(r.timings["prefix_tokens"] > 500 for r in records)
    assert max(r.timings["batch_size"] for r in records) >= 2
    store = cap.engine.prefixes
    assert store.misses == 1 and store.hits >= 1  # computed once, copied into every other batch
    # the stored state is copied, never advanced by a generate: a second pass gives the same texts again
    again = cap.caption(list(reversed(photos)))
    assert [r.raw for r in again] == list(reversed(refs))
    assert store.misses == 1
    # the time split: the prompt pass (prefill) apart from decoding, both measured
    assert all(r.timings["prefill"] > 0 and r.timings["generate"] > 0 for r in again)
    cap.close()


def test_without_prefix_reuse_outputs_are_the_same_and_batches_may_be_padded(setup):
    path, photos, refs = setup
    cap = _captioner(path, prefix_cache=False)
    records = cap.caption(photos[:4])  # four sizes: 640x428, 640x559, 612x612, 480x640
    assert [r.raw for r in records] == refs[:4]
    assert all(r.timings["prefix_tokens"] == 0 for r in records)
    assert {r.timings["batch_size"] for r in records} == {4}  # one padded batch of mixed sizes
    cap.close()


def _states(layer) -> dict[str, torch.Tensor]:
    """Every per-row tensor a cache layer holds (KV tensors; conv and recurrent states)."""
    out = {}
    for name, value in vars(layer).items():
        values = dict(enumerate(value)) if isinstance(value, list) else value if isinstance(value, dict) else {0: value}
        out.update({f"{name}[{k}]": v for k, v in values.items() if torch.is_tensor(v) and v.ndim >= 2})
    return out


def test_repeat_batch_copies_every_layer_state_and_leaves_the_original(setup):
    path, photos, _ = setup
    cap = _captioner(path)
    cap.caption(photos[:1])
    (stored,) = cap.engine.prefixes._store.values()
    kinds = {type(layer).__name__ for layer in stored.layers}
    assert len(kinds) >= 2, f"Qwen3.5 must hold attention and linear-attention layers, got {kinds}"
    before = [{k: v.clone() for k, v in _states(layer).items()} for layer in stored.layers]
    assert all(before), "every layer kind must hold state after the prefix"
    grown = repeat_batch(stored, 3)
    for layer, big, saved in zip(stored.layers, grown.layers, before, strict=True):
        now, copied = _states(layer), _states(big)
        for name, value in saved.items():
            assert torch.equal(now[name], value), f"{type(layer).__name__}.{name} changed"
            assert copied[name].shape[0] == 3 * value.shape[0]
            assert all(torch.equal(row, value[0]) for row in copied[name])
    cap.close()


def test_text_after_a_batch_of_images_is_still_the_cards_text_output(setup, coco_rows):
    """Qwen models keep M-RoPE offsets from their last call; a cached-prefix call must not reuse another batch's."""
    from capmill.records import Item

    path, photos, refs = setup
    loaded = card.card_load(path)
    texts = [row["captions"][0] for row in coco_rows[:2]]
    text_refs = [card.card_caption(*loaded, caption_text=t)[1] for t in texts]
    cap = _captioner(path)
    images = [cap.prepare(Item(str(p), str(p), data=p.read_bytes())) for p in photos[:3]]
    assert [g.text for g in cap.generate(images)] == refs[:3]  # a batch of images leaves its offsets behind
    for text, ref in zip(texts, text_refs, strict=True):  # one text alone, then both in one batch
        alone = cap.generate([cap.prepare(Item("t", "t", "text", text=text), mode="text")])
        assert alone[0].error is None and alone[0].text == ref
    both = cap.generate([cap.prepare(Item(f"t{i}", "t", "text", text=t), mode="text") for i, t in enumerate(texts)])
    assert [g.text for g in both] == text_refs
    cap.close()
