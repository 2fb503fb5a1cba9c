"""LoRA fine-tuning of captioners (curricula of stages, the model cards' recipes as presets) and faithful merging.

Heavy imports (torch, transformers, peft) happen inside the functions; ``pip install 'capmill[train]'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_config", "merge_adapter", "train", "verify_merged"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from capmill.train.config import load_config

        return load_config
    if name == "train":
        from capmill.train.trainer import train

        return train
    if name in ("merge_adapter", "verify_merged"):
        from capmill.train import merge

        return getattr(merge, name)
    raise AttributeError(f"module 'capmill.train' has no attribute {name!r}")
