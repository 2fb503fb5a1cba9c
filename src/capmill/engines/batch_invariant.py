"""Batch-invariant decoding: each row of a batched decode step multiplied by the weights as a batch of one would be.

BLAS computes a one-row product (a decode step of the card's one-image loop) with a matrix-vector kernel and an
eight-row product with a matrix-matrix kernel; the two round differently (about 1e-5 relative in float32). Greedy
decoding flips wherever the top two tokens are closer than that, so a batched caption can leave the card's from
that token on (seen: 1 of 48 photos under json-captioner, docs/benchmarks.md). Prompt passes have many tokens per
row and run matrix-matrix kernels either way, whose rows do not depend on how many there are; so only decode steps
(every row one token) are split, in each `nn.Linear`: the same kernel as the card's, the same bits.

Vision towers are the exception to "many tokens per row": a tiny photo is a handful of patches, and BLAS takes a
different kernel for a 24-row product than for the same 24 rows inside a 300-row one (seen with Qwen2.5-VL on
torch 2.14: a 12x8 photo's features off by 7e-7 beside larger photos). So a vision tower that takes its images as
one patch sequence with `grid_thw` (the Qwen-VL families) encodes one image or video at a time, as the card's
one-image loop does.

Version-sensitive: the tower is found as a module named `visual` with `spatial_merge_size`, called as
`visual(hidden_states, grid_thw=...)` (transformers 5.23-5.25, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5); the
fast-path guard checks the result against rows alone on the first batch.
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
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "forward" not in module.__dict__:
            module.forward = _RowWise(module)
            changed += 1
        elif name.rsplit(".", 1)[-1] == "visual" and hasattr(module, "spatial_merge_size"):
            if "forward" not in module.__dict__:
                module.forward = _PerImage(module)
    return changed


class _PerImage:
    """A `grid_thw` vision tower's forward: each image (or video) of the patch sequence encoded on its own, the
    outputs joined in order as the batched call returns them."""

    def __init__(self, module: Any):
        self.module = module

    def __call__(self, hidden_states: Any, grid_thw: Any = None, **kwargs: Any) -> Any:
        forward = type(self.module).forward
        if grid_thw is None or len(grid_thw) < 2:
            return forward(self.module, hidden_states, grid_thw=grid_thw, **kwargs)
        sizes = [int(n) for n in grid_thw.prod(-1).tolist()]
        outputs = [
            forward(self.module, chunk, grid_thw=grid_thw[i : i + 1], **kwargs)
            for i, chunk in enumerate(hidden_states.split(sizes))
        ]
        return _joined(outputs)


def _joined(outputs: list[Any]) -> Any:
    """Outputs of the same structure (tensors, tuples/lists of tensors, model outputs) joined along dim 0."""
    import torch

    first = outputs[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if hasattr(first, "keys") and hasattr(first, "to_tuple"):  # a transformers ModelOutput
        return type(first)(**{key: _joined([o[key] for o in outputs]) for key in first.keys()})
    if isinstance(first, (tuple, list)):
        return type(first)(_joined([o[i] for o in outputs]) for i in range(len(first)))
    return first


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
