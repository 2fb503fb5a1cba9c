"""Reuse of the shared prompt prefix: computed once, then copied into every batch that starts with it.

The json-captioner puts ~800 tokens of system prompt and tool schema in front of every image. When all rows of
a batch have the same length (no padding), the tokens before the first image are identical in every row, so
their key/value state (and, for Qwen3.5, the linear-attention conv and recurrent state) is computed once per
run and repeated along the batch. With left padding the rows' prefixes sit at different offsets, and a padded
linear-attention state is not the unpadded one, so padded batches take the plain path: outputs stay exactly
those of a one-shot prefill (checked by the fidelity tests, which mix both kinds of batch). To keep batches
unpadded, the engine cuts them at token-length boundaries (`equal_length_batches`) when the prefix is reused.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

MIN_PREFIX = 32  # shorter shared prefixes are not worth a separate forward pass
SEQUENCE_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


def collate(singles: list[Any], pad_token_id: int) -> Any:
    """Batch-1 encodings -> one left-padded batch, as the processor's own `padding=True` batch would be."""
    import torch
    from transformers import BatchFeature

    if len(singles) == 1:
        return singles[0]
    width = max(s["input_ids"].shape[1] for s in singles)
    out: dict[str, Any] = {}
    for key in singles[0].keys():
        values = [s[key] for s in singles]
        if not all(torch.is_tensor(v) for v in values):
            out[key] = values[0]
            continue
        is_sequence = key in SEQUENCE_KEYS or (
            values[0].ndim == 2 and values[0].shape == singles[0]["input_ids"].shape and key.endswith("_ids")
        )
        if is_sequence:
            fill = pad_token_id if key == "input_ids" else 0
            rows = [
                torch.cat([v.new_full((1, width - v.shape[1]), fill), v], dim=1) if v.shape[1] < width else v
                for v in values
            ]
            out[key] = torch.cat(rows, dim=0)
        else:
            out[key] = torch.cat(values, dim=0)
    return BatchFeature(out)


def equal_length_batches(indices: list[int], lengths: dict[int, int], size: int) -> list[list[int]]:
    """Sub-batches of at most `size` whose rows have one token length: unpadded, so each can reuse the prefix.

    A padded batch cannot take the cached prefix (the rows' prefixes sit at different offsets), and the prefix
    is most of the prompt (json-captioner: ~800 of ~830 tokens), so an extra, smaller batch that skips it costs
    far less than a full batch that recomputes it for every row. Photos resized to the same grid (most of a
    real collection) share one length, so the batches stay large.
    """
    runs: dict[int, list[int]] = {}
    for i in sorted(indices, key=lambda i: lengths[i]):
        runs.setdefault(lengths[i], []).append(i)
    return [run[k : k + size] for run in runs.values() for k in range(0, len(run), size)]


def shared_prefix_length(inputs: Any, media_token_ids: set[int]) -> int:
    """Tokens shared by every row before any media token; 0 when rows are padded or share too little."""
    import torch

    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        return 0
    same = (ids == ids[:1]).all(dim=0)
    n = int(same.long().cumprod(0).sum())
    media = torch.isin(ids[0], torch.tensor(sorted(media_token_ids), dtype=ids.dtype)) if media_token_ids else None
    if media is not None and bool(media.any()):
        n = min(n, int(media.nonzero()[0]))
    n = min(n, ids.shape[1] - 1)  # generate must have at least one token of its own
    return n if n >= MIN_PREFIX else 0


def output_cache(out: Any) -> Any:
    """The cache a forward or `generate(return_dict_in_generate=True)` returned (`cache` from transformers 5.25 on)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def repeat_batch(cache: Any, repeats: int) -> Any:
    """A copy of a batch-1 cache with every per-row tensor repeated `repeats` times (any layer kind)."""
    import torch

    def grow(value: Any) -> Any:
        if torch.is_tensor(value) and value.ndim >= 2 and value.shape[0] == 1:
            return value.repeat_interleave(repeats, dim=0)
        if isinstance(value, list):  # linear-attention layers keep per-state lists of tensors
            return [grow(v) for v in value]
        if isinstance(value, dict):
            return {k: grow(v) for k, v in value.items()}
        return value

    cache = copy.deepcopy(cache)
    for layer in getattr(cache, "layers", []):
        for name, value in list(vars(layer).items()):
            setattr(layer, name, grow(value))
    return cache


class PrefixStore:
    """The last few prefixes' batch-1 caches, keyed by their token ids."""

    def __init__(self, size: int = 2):
        self.size = size
        self._store: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every stored prefix (the next batch computes its prefix again, as a fresh run's first does)."""
        self._store.clear()

    def cache_for(self, model: Any, prefix_ids: Any, batch: int) -> Any:
        import torch

        key = tuple(prefix_ids[0].tolist())
        cache = self._store.get(key)
        if cache is None:
            self.misses += 1
            with torch.inference_mode():
                out = model(
                    input_ids=prefix_ids,
                    attention_mask=torch.ones_like(prefix_ids),
                    use_cache=True,
                    logits_to_keep=1,
                )
            cache = output_cache(out)
            self._store[key] = cache
            while len(self._store) > self.size:
                self._store.popitem(last=False)
        else:
            self.hits += 1
            self._store.move_to_end(key)
        return repeat_batch(cache, batch)
