"""Training configuration: LoRA options, curriculum stages, and the model cards' recipes as presets.

A config is a YAML file (or flags) validated here before any model loads, so a typo fails at once. Presets
hold the recipes of two model cards: ``json-captioner`` (Qwen3.5 LoRA) and ``blip2-lora`` (BLIP-2 + flan-t5 LoRA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from capmill.errors import ConfigError

QWEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraOptions(BaseModel):
    """peft LoraConfig fields; ``language_only`` keeps the vision tower untouched (as both cards did)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(32, ge=1)
    alpha: float = Field(64, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(QWEN_PROJECTIONS))
    language_only: bool = True
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False


class Stage(BaseModel):
    """One step of a curriculum: its data, length and learning rate; stages continue one adapter."""

    model_config = ConfigDict(extra="forbid")

    name: str = "stage"
    data: list[str] = Field(min_length=1)
    format: Literal["auto", "chat", "pairs"] = "auto"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    # Keep only rows whose top-level fields equal these values (the json-captioner card: grounded == True).
    where: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)


class TrainConfig(BaseModel):
    """Everything a training run needs; stored in the run folder and compared on resume."""

    model_config = ConfigDict(extra="forbid")

    base: str
    out: str
    stages: list[Stage] = Field(min_length=1)
    preset: str | None = None
    init_adapter: str | None = None  # warm start (the json-captioner's v2 continued its v1 adapter)
    lora: LoraOptions = Field(default_factory=LoraOptions)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    batch_size: int = Field(16, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)  # rows per forward pass; the rest is gradient accumulation
    grad_accumulation: int = Field(1, ge=1)
    max_length: int = Field(2048, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    gradient_checkpointing: bool = False
    # Pairs: the user prompt (and optional system prompt / scaffold file) each caption answers.
    prompt: str = "Describe this image."
    system_prompt: str | None = None
    scaffold: str | None = None
    enable_thinking: bool = False
    save_steps: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    encode_cache_mb: int = Field(1024, ge=0)  # encoded rows kept in memory across epochs

    @model_validator(mode="after")
    def _micro_batch(self) -> TrainConfig:
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % micro:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {micro}")
        return self

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step: batch_size / micro_batch_size, times grad_accumulation."""
        return (self.batch_size // self.micro) * self.grad_accumulation

    def run_dir(self) -> Path:
        return Path(self.out)

    def identity(self) -> dict[str, Any]:
        """The fields that define what is trained; a resumed run must match them."""
        return self.model_dump(
            exclude={"out", "save_steps", "keep_checkpoints", "logging_steps", "device", "encode_cache_mb"}
        )


# The json-captioner card (AbstractPhil/Qwen3.5-0.8B-json-captioner): LoRA r 32 / alpha 64 / dropout 0.05 on every projection,
# AdamW lr 1e-4 cosine with 3% warm-up, batch 16, max length 2048, seed 42, bf16 on GPU; two stages (bulk CC
# data for 1 epoch, then the Claude gold set for 2 epochs) continuing one adapter.
JSON_CAPTIONER = {
    "lora": {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": QWEN_PROJECTIONS},
    "learning_rate": 1e-4,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.03,
    "batch_size": 16,
    "grad_accumulation": 1,
    "max_length": 2048,
    "seed": 42,
    "enable_thinking": False,
}
# The blip2-lora card (erayalp/blip2-flan-t5-xl-LoRA-image-captioning): LoRA r 128 / alpha 128 / dropout 0.05 on the
# decoder's q, k, v; AdamW lr 3e-5 cosine with warm-up, batch 32 with 2 accumulation steps, 4 epochs, bf16.
BLIP2_LORA = {
    "lora": {"r": 128, "alpha": 128, "dropout": 0.05, "target_modules": ["q", "k", "v"]},
    "learning_rate": 3e-5,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.03,
    "batch_size": 32,
    "grad_accumulation": 2,
    "prompt": "Provide a detailed caption for this photo.",
    "max_length": 512,
    "seed": 42,
}
PRESETS: dict[str, dict[str, Any]] = {"json-captioner": JSON_CAPTIONER, "blip2-lora": BLIP2_LORA}
PRESET_STAGE_DEFAULTS = {"json-captioner": {"epochs": 1}, "blip2-lora": {"epochs": 4}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Preset (if named), then the file's values, then flag overrides; a ConfigError names what is wrong."""
    data = _merge(raw, overrides or {})
    preset = data.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown training preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
        stage_default = PRESET_STAGE_DEFAULTS[preset]
        data = _merge(PRESETS[preset], data)
        data["stages"] = [{**stage_default, **s} if isinstance(s, dict) else s for s in data.get("stages", [])]
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"training config: {problems}") from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML (or JSON) training config and apply overrides."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"training config {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"training config {p}: not valid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"training config {p}: expected a mapping at the top level")
        base_dir = p.parent
        for stage in raw.get("stages") or []:  # data paths are relative to the config file
            if isinstance(stage, dict) and isinstance(stage.get("data"), (list, str)):
                items = [stage["data"]] if isinstance(stage["data"], str) else stage["data"]
                stage["data"] = [
                    str(base_dir / d) if not Path(d).is_absolute() and (base_dir / d).exists() else d for d in items
                ]
    return build_config(raw, overrides)
