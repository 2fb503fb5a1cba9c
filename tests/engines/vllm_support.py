"""Shared settings for the tests that run vLLM (marker `vllm`, run by .ci/vllm-stage in the vLLM environment)."""

from __future__ import annotations

import os
from pathlib import Path

# In-process engine core (no extra process), 1 GiB of KV cache: an engine starts in seconds on this CPU.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# float32 like the transformers engine on CPU (vLLM's "auto" would run these float32 checkpoints in bfloat16)
VLLM_OPTIONS = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}
# vLLM's CPU kernel for Qwen3.5's linear-attention (Gated DeltaNet) layers takes bfloat16 only and head
# dimension 128, so the Qwen3.5 fixture is built a little wider than the default tiny size.
QWEN3_5_SIZES = {"hidden_size": 256, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 256}
QWEN3_5_OPTIONS = {**VLLM_OPTIONS, "dtype": "bfloat16"}
SCAFFOLD = Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl"


def first_difference(a: list, b: list) -> int | None:
    """Index of the first position where two sequences differ (None when one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def bf16_ulp(value: float) -> float:
    """The spacing of bfloat16 numbers around `value` (8 significant bits)."""
    import math

    return 2.0 ** (math.floor(math.log2(abs(value))) - 7) if value else 2.0**-133
