"""Helpers for the fidelity tests: capmill's model inputs and outputs against a card's own snippet.

Each test module writes its card's usage code literally (only the model path, the device, float32 on CPU and a
short max_new_tokens changed) and compares, for the same photos:
- inputs: capmill's batch-1 encoding equals the card's tensors, key by key; capmill's batch-8 encoding is the
  concatenation of those batch-1 encodings, left-padded (checked row by row);
- outputs: capmill's greedy text at batch 1 and inside a batch of 8 mixed-size photos equals the card's.
"""

from __future__ import annotations

from pathlib import Path

import torch

MAX_NEW_TOKENS = 12  # the only decoding change from the cards: random tiny models never stop on their own
# eight photos of mixed sizes: 640x428, 640x559, 612x612, 480x640, 640x424, 500x333, 640x480, 640x480
BATCH_PHOTOS = (0, 1, 2, 3, 4, 9, 10, 11)


def batch_photos(coco_photos: list[Path]) -> list[Path]:
    return [coco_photos[i] for i in BATCH_PHOTOS]


def assert_same_tensors(ref, got, what: str) -> None:
    """Every tensor the card's code produced is in capmill's inputs, with the same shape and values."""
    for key, value in ref.items():
        if not torch.is_tensor(value):
            continue
        assert key in got, f"{what}: capmill's inputs lack {key!r}"
        other = got[key]
        assert other.shape == value.shape, f"{what}: {key} shape {tuple(other.shape)} != card {tuple(value.shape)}"
        assert other.dtype == value.dtype, f"{what}: {key} dtype {other.dtype} != card {value.dtype}"
        assert torch.equal(other, value), f"{what}: {key} differs from the card's"


def assert_singles_equal_card(refs: list, singles: list, photos: list[Path]) -> None:
    """Each photo's batch-1 encoding equals the card's inputs for it (refs: the card's (inputs, text) pairs)."""
    for (ref_inputs, _), single, photo in zip(refs, singles, photos, strict=True):
        assert_same_tensors(ref_inputs, single, photo.name)


def assert_batch_is_padded_singles(batch, singles: list, concat_keys: tuple[str, ...]) -> None:
    """Rows of a left-padded batch equal the batch-1 encodings; per-image tensors are their concatenation."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == len(singles)
    for row, single in enumerate(singles):
        n = single["input_ids"].shape[1]
        pad = ids.shape[1] - n
        assert torch.equal(ids[row, pad:], single["input_ids"][0]), f"row {row}: input_ids differ from batch 1"
        assert mask[row, :pad].sum() == 0 and mask[row, pad:].all(), f"row {row}: not left padded"
    for key in concat_keys:
        joined = torch.cat([s[key] for s in singles], dim=0)
        assert torch.equal(batch[key], joined), f"{key}: batch is not the batch-1 tensors in order"


def capmill_encodings(cap, photos: list[Path]):
    """capmill's encodings of these photos: each alone and all together (in this order, no sorting)."""
    from capmill.records import Item

    processor = cap.processor()
    requests = [cap.prepare(Item(id=p.stem, source=str(p), data=p.read_bytes())) for p in photos]
    singles = [cap.family.encode(processor, [r]) for r in requests]
    return singles, cap.family.encode(processor, requests)
