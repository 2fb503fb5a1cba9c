"""Attach a LoRA adapter (new, or continued from a saved one) to a loaded base model with peft."""

from __future__ import annotations

import re
from typing import Any

from capmill.errors import ConfigError, MissingDependencyError
from capmill.train.config import LoraOptions

# Module-name parts of vision towers and bridges; language_only adapters never touch them.
VISION_PARTS = ("visual", "vision_tower", "vision_model", "qformer", "multi_modal_projector", "language_projection")


def target_pattern(options: LoraOptions) -> str | list[str]:
    """peft ``target_modules``: the plain names, or a regex restricted to the language model."""
    if not options.language_only:
        return list(options.target_modules)
    names = "|".join(re.escape(n) for n in options.target_modules)
    avoid = "|".join(re.escape(p) for p in VISION_PARTS)
    return rf"^(?!.*\.?({avoid})\.).*\.({names})$"


def lora_config(options: LoraOptions, *, task_type: str | None):
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise MissingDependencyError("peft", "train", "LoRA fine-tuning") from exc
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target_pattern(options),
        bias=options.bias,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
        task_type=task_type,
    )


def attach(model: Any, options: LoraOptions, init_adapter: str | None = None) -> Any:
    """A trainable PeftModel: ``init_adapter`` continued (its own config wins) or a fresh adapter from ``options``."""
    from peft import PeftModel, get_peft_model

    if init_adapter:
        try:
            return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"init_adapter {init_adapter}: cannot load a LoRA adapter ({exc})") from None
    # Causal LMs get the card's task type (CAUSAL_LM); encoder-decoders (BLIP-2's T5) a plain PeftModel.
    task = None if getattr(model.config, "is_encoder_decoder", False) or _is_blip2(model) else "CAUSAL_LM"
    try:
        peft_model = get_peft_model(model, lora_config(options, task_type=task))
    except ValueError as exc:
        raise ConfigError(f"LoRA target modules {options.target_modules} do not match this model ({exc})") from None
    return peft_model


def _is_blip2(model: Any) -> bool:
    return getattr(model.config, "model_type", "") in ("blip-2", "blip_2")


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
