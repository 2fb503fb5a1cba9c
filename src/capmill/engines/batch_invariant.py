"""Batch-invariant decoding: each row of a batched decode step multiplied by the weights as a batch of one would be.

BLAS computes a one-row product (a decode step of the card's one-image loop) with a matrix-vector kernel and an
eight-row product with a matrix-matrix kernel; the two round differently (about 1e-5 relative in float32). Greedy
decoding flips wherever the top two tokens are closer than that, so a batched caption can leave the card's from
that token on (seen: 1 of 48 photos under json-captioner, docs/benchmarks.md). Prompt passes have many tokens per
row and run matrix-matrix kernels either way, whose rows do not depend on how many there are; so only decode steps
(every row one token) are split, in each `nn.Linear`: the same kernel as the card's, the same bits.
"""

from __future__ import annotations

from typing import Any


def make_batch_invariant(model: Any) -> int:
    """Route the decode steps of every `nn.Linear` in `model` one row at a time, and its text decoder's attention
    row by row (`exact_attention`); returns how many Linears were changed."""
    import torch

    from capmill.engines.exact_attention import install

    install(model)
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and "forward" not in module.__dict__:
            module.forward = _RowWise(module)
            changed += 1
    return changed


class _RowWise:
    """The instance's forward: decode-step batches row by row, anything else as nn.Linear does it."""

    def __init__(self, module: Any):
        self.module = module

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        weight, bias = self.module.weight, self.module.bias
        if x.dim() == 3 and x.shape[1] == 1 and x.shape[0] > 1:
            return torch.cat([F.linear(row, weight, bias) for row in x.split(1)])
        return F.linear(x, weight, bias)
