"""Attention for `--exact`: every row of a batch attends as it would alone, padding cut away.

PyTorch's CPU SDPA kernels split their work by batch size, so row 0 of an 8-row decode step rounds differently from
the same row alone (seen with transformers 5.25 / torch 2.14: ~1e-7 after one layer, a flipped near-tie a few tokens
later). Here each row is sliced to its own keys (left padding removed) and run through transformers' own SDPA
function with the mask a batch of one would get: none when the row sees every key causally and the query is one
token or the whole sequence, the row's own mask otherwise. A batch of one passes straight through.

Version-sensitive: registered through transformers' public `AttentionInterface`; the mask rule follows
`masking_utils._ignore_causal_mask_sdpa` (checked against transformers 5.23-5.25). The fast-path guard
(`engines/fast_paths.py`) checks the result against one-row generation on the first batch of every model.
"""

from __future__ import annotations

from typing import Any

NAME = "capmill_exact_sdpa"


def install(model: Any) -> bool:
    """Make the language model of `model` attend row by row; False when it has no causal text decoder to change.

    Only the text decoder changes (vision towers attend per image already, and encoder-decoder models keep their
    attention: the guard tells whether `--exact` holds for them without it).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None:
        return False
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "_attn_implementation", None) != "sdpa":
        text = getattr(config, "text_config", None)
        if text is None or getattr(text, "_attn_implementation", None) != "sdpa":
            return False
    AttentionInterface.register(NAME, exact_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if "text_config" in getattr(config, "sub_configs", {}):
        if getattr(config.text_config, "is_encoder_decoder", False):
            return False
        model.set_attn_implementation({"text_config": NAME})
    else:
        model.set_attn_implementation(NAME)
    return True


def exact_sdpa_attention_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch = query.shape[0]
    if batch == 1 or key.shape[0] != batch:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    q_len, k_len = query.shape[2], key.shape[2]
    rows = []
    for b in range(batch):
        q, k, v, mask = query[b : b + 1], key[b : b + 1], value[b : b + 1], None
        if attention_mask is not None:
            row_mask = attention_mask[b : b + 1, :, -q_len:, -k_len:]
            if row_mask.dtype != torch.bool:
                row_mask = row_mask == 0
            seen = row_mask[0, 0, -1]  # the last query sees every real key: left padding is its leading False run
            pad = int(seen.long().argmax()) if bool(seen.any()) else 0
            k, v = k[:, :, pad:], v[:, :, pad:]
            real_q = min(q_len, k_len - pad)  # queries sitting on padded positions are dropped too
            q = q[:, :, q_len - real_q :]
            row_mask = row_mask[:, :, q_len - real_q :, pad:]
            causal = torch.ones(real_q, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - real_q)
            if not (torch.equal(row_mask[0, 0], causal) and (real_q == 1 or real_q == k.shape[2])):
                mask = row_mask
        out, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
        if out.shape[1] < q_len:  # padded query positions: their output is never read by a real token
            out = torch.cat([out.new_zeros(1, q_len - out.shape[1], *out.shape[2:]), out], dim=1)
        rows.append(out)
    return torch.cat(rows), None
