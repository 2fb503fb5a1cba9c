"""Padded batches that still reuse the shared prefix: each row's prompt from the prefix, then one batched decode.

A left-padded batch cannot start from one shared prefix state (each row's prefix sits at another offset, and a
padded linear-attention state is not the unpadded one). So each row's prompt is run at batch 1 from the cached
prefix (its first token chosen as `generate` would), the rows' caches are merged (attention keys/values
left-padded to one length, linear-attention states stacked, M-RoPE deltas recomputed for the padded batch) and
all rows decode together. Every row sees exactly the state of a one-shot batch-1 prefill; checked against the
card by tests/models/test_fidelity_json_captioner.py, and at run time by the fast-path guard (fast_paths.py).

Version-sensitive: reads and rebuilds transformers' cache layers (`DynamicLayer` keys/values, `LinearAttentionLayer`
conv/recurrent states and its token count), checked against transformers 5.23-5.25.
"""

from __future__ import annotations

import copy
from typing import Any

from capmill.engines.prefix_cache import PrefixStore, collate, output_cache


def merge_rows(caches: list[Any], lengths: list[int]) -> Any:
    """Batch-1 caches of different lengths -> one batch cache, attention slots left-padded with zeros."""
    import torch

    width = max(lengths)

    def join(values: list[Any], name: str) -> Any:
        first = values[0]
        if torch.is_tensor(first) and first.ndim >= 2 and first.shape[0] == 1:
            if name in ("keys", "values"):
                values = [torch.nn.functional.pad(v, (0, 0, width - v.shape[-2], 0)) for v in values]
            return torch.cat(values, dim=0)
        return first

    merged = copy.deepcopy(caches[0])
    for index, layer in enumerate(merged.layers):
        for name, value in list(vars(layer).items()):
            values = [vars(c.layers[index])[name] for c in caches]
            if isinstance(value, dict):
                setattr(layer, name, {k: join([v[k] for v in values], name) for k in value})
            elif isinstance(value, list):
                setattr(layer, name, [join([v[k] for v in values], name) for k in range(len(value))])
            else:
                setattr(layer, name, join(values, name))
        if hasattr(layer, "cumulative_length_linear"):  # transformers >= 5.25: a linear layer counts its tokens, and
            # `generate` takes the cache's length from layer 0, a linear layer in Qwen3.5: the merged batch is `width`
            layer.cumulative_length_linear = torch.tensor(width, dtype=layer.cumulative_length_linear.dtype)
    return merged


def cache_kwarg(model: Any) -> str:
    """The name `generate` takes a starting cache by: `cache` from transformers 5.25 on, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def reset_rope_state(model: Any) -> None:
    """Forget the M-RoPE offsets a Qwen-VL model keeps from its last call.

    Qwen2-VL, Qwen2.5-VL and Qwen3.5 store `rope_deltas` on the model and reuse them whenever a call starts
    from a cache (a reused prefix): left over from another batch they give a text-only prompt the positions of
    the previous images, or the wrong batch size. Every generate call that starts from a cache starts clean.
    """
    for module in (model, getattr(model, "model", None)):
        if module is not None and getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = None


def generate_merged(
    model: Any,
    prefixes: PrefixStore,
    singles: list[Any],
    prefix: int,
    kwargs: dict[str, Any],
    pad_token_id: int,
    finished_first: Any,
    on_first: Any = None,
    cache_kwarg: str = "past_key_values",
) -> Any:
    """Token ids (B, padded prompt + new tokens) as one left-padded `generate` call would return them.

    `finished_first(token_id) -> bool` says whether a row ended with its first token (eos or a stop string);
    such a row's later tokens are replaced by padding, as a batched `generate` would leave them.
    """
    import torch

    row_kwargs = {k: v for k, v in kwargs.items() if k not in ("streamer", cache_kwarg)}
    row_kwargs["max_new_tokens"] = 1
    caches, firsts, lengths = [], [], []
    for single in singles:
        cache = prefixes.cache_for(model, single["input_ids"][:1, :prefix], 1)
        reset_rope_state(model)
        out = model.generate(**single, **{cache_kwarg: cache}, return_dict_in_generate=True, **row_kwargs)
        caches.append(output_cache(out))
        firsts.append(out.sequences[:, -1:])
        lengths.append(single["input_ids"].shape[1])
    if on_first is not None:
        on_first()
    batch = collate(singles, pad_token_id)
    first = torch.cat(firsts)
    ids = torch.cat([batch["input_ids"], first], dim=1)
    mask = batch["attention_mask"]
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    more = int(kwargs["max_new_tokens"]) - 1
    if more <= 0:
        return ids
    extra: dict[str, Any] = {}
    inner = getattr(model, "model", None)
    reset_rope_state(model)
    if "mm_token_type_ids" in batch and hasattr(inner, "get_rope_index"):
        mm = batch["mm_token_type_ids"]
        extra["mm_token_type_ids"] = torch.cat([mm, mm.new_zeros((mm.shape[0], 1))], dim=1)
        grids = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw") if k in batch}
        _, inner.rope_deltas = inner.get_rope_index(
            batch["input_ids"], attention_mask=batch["attention_mask"], mm_token_type_ids=mm, **grids
        )
    cont_kwargs = {k: v for k, v in kwargs.items() if k != cache_kwarg}
    cont_kwargs["max_new_tokens"] = more
    merged = merge_rows(caches, lengths)
    out = model.generate(input_ids=ids, attention_mask=mask, **{cache_kwarg: merged}, **extra, **cont_kwargs)
    done = torch.tensor([bool(finished_first(int(t))) for t in first[:, 0]])
    if bool(done.any()):
        out[done, ids.shape[1] :] = pad_token_id
    return out
