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


def shape_seeds() -> list[int]:
    """Seeds for shaped_photos: CAPMILL_SHAPE_SEEDS="0,1" (default "0"), or "random:N" for N fresh seeds.

    Fresh seeds are printed (pytest -s, or in the failure report) so a failing shape set can be replayed.
    """
    import os
    import random

    spec = os.environ.get("CAPMILL_SHAPE_SEEDS", "0")
    if spec.startswith("random:"):
        seeds = [random.SystemRandom().randrange(10**6) for _ in range(int(spec.split(":", 1)[1]))]
        print(f"CAPMILL_SHAPE_SEEDS={','.join(map(str, seeds))}")
        return seeds
    return [int(s) for s in spec.split(",") if s.strip()]


def shaped_photos(coco_photos: list[Path], folder: Path, seed: int, n: int = 8) -> list[Path]:
    """`n` real photos resized to sizes drawn from `seed`: tiny, square, panoramic, portrait and large ones mixed,
    so the image-token counts (and the padding of a batch) differ from row to row."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    kinds = ["tiny", "square", "panorama", "portrait", "large"]
    paths = []
    for i in range(n):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        if kind == "tiny":
            size = (rng.randint(8, 48), rng.randint(8, 48))
        elif kind == "square":
            side = rng.randint(64, 700)
            size = (side, side)
        elif kind == "panorama":
            h = rng.randint(40, 300)
            size = (int(h * rng.uniform(2.5, 6.0)), h)
        elif kind == "portrait":
            w = rng.randint(40, 300)
            size = (w, int(w * rng.uniform(2.5, 6.0)))
        else:
            size = (rng.randint(900, 2000), rng.randint(900, 2000))
        source = coco_photos[rng.randrange(len(coco_photos))]
        path = folder / f"seed{seed}-{i}-{kind}-{size[0]}x{size[1]}.png"
        with Image.open(source) as im:
            im.convert("RGB").resize(size).save(path)
        paths.append(path)
    return paths
