"""Merge a LoRA adapter into its base and prove the merge faithful before publishing it.

As the json-captioner card did: ``merge_and_unload(safe_merge=True)``, then the maximum absolute logit difference between
base + LoRA and the merged model, in memory and reloaded from disk, on sample inputs (text-only and with
images). Above the tolerance a MergeFaithfulnessError is raised and nothing is written to ``out``. The merged
folder holds weights, config, generation config, processor, tokenizer and chat template, and loads alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError, MergeFaithfulnessError, ModelLoadError
from capmill.models.resolve import MERGE_FILE

# Default tolerance, relative to the largest reference logit: float32 merges agree to rounding; bfloat16 keeps
# about 3 significant digits per weight, and its rounding adds up through the layers.
RELATIVE_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
SAMPLE_PROMPTS = ["Describe this image.", "A red bus parked beside a brick building on a rainy street."]


@dataclass
class FaithfulnessReport:
    adapter: str
    base: str
    dtype: str
    tolerance: float
    samples: int
    in_memory: float
    reloaded: float | None = None
    out: str | None = None

    @property
    def passed(self) -> bool:
        worst = max(self.in_memory, self.reloaded if self.reloaded is not None else 0.0)
        return worst <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on (adapter_config.json), for when --base is not given."""
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.is_file():
        raise ConfigError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{cfg} does not name its base model; pass --base")
    return base


def _torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose float32, bfloat16 or float16") from None


def _load_model(path: str, dtype: Any, device: str):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {path!r}: {exc}") from None


def _load_processor(adapter: str, base: str):
    """The adapter's own processor files when training saved them (same chat template), else the base's."""
    from transformers import AutoProcessor

    for source in (adapter, base):
        if Path(source).is_dir() and not any(Path(source).glob("*token*")):
            continue
        try:
            return AutoProcessor.from_pretrained(source)
        except (OSError, ValueError):
            continue
    raise ModelLoadError(f"no processor found in {adapter} or {base}")


def sample_images(paths: list[str] | None = None) -> list[Any]:
    """Images for the check: given files, else two deterministic synthetic pictures (no data needed)."""
    import numpy as np
    from PIL import Image

    if paths:
        from capmill.train.masking import load_image

        return [load_image(p) for p in paths]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    gradient = np.stack([xx * 255 // 320, yy * 255 // 240, (xx + yy) * 255 // 560], -1).astype(np.uint8)
    noise = rng.integers(0, 256, size=(200, 260, 3), dtype=np.uint8)
    return [Image.fromarray(gradient), Image.fromarray(noise)]


def sample_inputs(processor: Any, model: Any, images: list[Any]) -> list[dict[str, Any]]:
    """Model inputs covering text-only and image prompts, built with the processor's own template."""
    import torch

    tok = getattr(processor, "tokenizer", processor)
    inputs = []
    if getattr(processor, "chat_template", None):
        for text in SAMPLE_PROMPTS:
            msgs = [{"role": "user", "content": [{"type": "text", "text": text}]}]
            inputs.append(_chat(processor, msgs, None))
        for img in images:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": SAMPLE_PROMPTS[0]}]}]
            inputs.append(_chat(processor, msgs, [img]))
    else:  # BLIP-2 / encoder-decoder: image + prompt, teacher-forced decoder tokens
        start = model.config.text_config.decoder_start_token_id if hasattr(model.config, "text_config") else 0
        target = tok(SAMPLE_PROMPTS[1], return_tensors="pt")["input_ids"]
        decoder_ids = torch.cat([torch.tensor([[start if start is not None else 0]]), target], dim=1)
        for img in images:
            enc = dict(processor(images=img, text=SAMPLE_PROMPTS[0], return_tensors="pt"))
            inputs.append(enc | {"decoder_input_ids": decoder_ids})
    return inputs


def _chat(processor: Any, messages: list[dict[str, Any]], images: list[Any] | None) -> dict[str, Any]:
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    return dict(processor(**kwargs))


def logits(model: Any, inputs: list[dict[str, Any]]) -> list[Any]:
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for batch in inputs:
            moved = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
            out.append(model(**moved).logits.float().cpu())
    return out


def default_tolerance(dtype: str, reference: list[Any]) -> float:
    """Absolute tolerance from the relative one and the size of the reference logits (at least 1)."""
    scale = max(1.0, max(float(x.abs().max()) for x in reference))
    return RELATIVE_TOLERANCE.get(dtype, 1e-4) * scale


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    tolerance: float | None = None,
    images: list[str] | None = None,
    overwrite: bool = False,
    profile: str | None = None,
) -> FaithfulnessReport:
    """Merge ``adapter`` into ``base``, check faithfulness in memory and reloaded, then publish to ``out``.

    The merged folder records the profile it runs under (``profile``, else the one the adapter was trained for,
    else the base's), so inference picks it without ``--profile``."""
    from peft import PeftModel

    adapter, out = str(adapter), Path(out)
    base = base or adapter_base(adapter)
    profile_name = merged_profile(adapter, base, profile)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} is not empty; choose another --out or pass --overwrite")
    torch_dtype = _torch_dtype(dtype)
    processor = _load_processor(adapter, base)
    model = _load_model(base, torch_dtype, device)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot apply adapter {adapter} to {base}: {exc}") from None
    inputs = sample_inputs(processor, model, sample_images(images))
    reference = logits(peft_model, inputs)
    tol = default_tolerance(dtype, reference) if tolerance is None else tolerance
    try:
        merged = peft_model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # safe_merge refuses weights that become NaN or inf
        raise MergeFaithfulnessError(f"merging {adapter} into {base} breaks the weights: {exc}") from None
    report = FaithfulnessReport(adapter, base, dtype, tol, len(inputs), max_abs_diff(reference, logits(merged, inputs)))
    if not report.passed:
        raise _unfaithful(report, "in memory")
    tmp = out.with_name(f".{out.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    reloaded = _load_model(str(tmp), torch_dtype, device)
    report.reloaded = max_abs_diff(reference, logits(reloaded, inputs))
    if not report.passed:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unfaithful(report, "reloaded from disk")
    report.out = str(out)
    recorded = {**report.to_json(), **({"profile": profile_name} if profile_name else {})}
    (tmp / MERGE_FILE).write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return report


def merged_profile(adapter: str, base: str, given: str | None) -> str | None:
    """The profile a merged checkpoint runs under: the one given, the adapter's training preset, or the base's
    (by its checkpoint name); None when only `generic` fits, which inference falls back to anyway."""
    from capmill.models.catalog import PROFILES, get_profile
    from capmill.models.resolve import resolve_profile

    if given:
        return get_profile(given).name  # an unknown name fails before any model loads
    meta = Path(adapter) / "capmill_train.json"
    if meta.is_file():
        preset = (json.loads(meta.read_text(encoding="utf-8")).get("config") or {}).get("preset")
        if preset and preset in PROFILES:
            return preset
    name = resolve_profile(base).name
    return None if name == "generic" else name


def verify_merged(
    merged: str | Path,
    adapter: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    tolerance: float | None = None,
    images: list[str] | None = None,
) -> FaithfulnessReport:
    """Check an existing merged checkpoint against base + adapter (e.g. a published merge against its LoRA)."""
    from peft import PeftModel

    adapter, merged = str(adapter), str(merged)
    base = base or adapter_base(adapter)
    torch_dtype = _torch_dtype(dtype)
    processor = _load_processor(adapter, base)
    model = _load_model(base, torch_dtype, device)
    peft_model = PeftModel.from_pretrained(model, adapter).eval()
    inputs = sample_inputs(processor, model, sample_images(images))
    reference = logits(peft_model, inputs)
    tol = default_tolerance(dtype, reference) if tolerance is None else tolerance
    candidate = _load_model(merged, torch_dtype, device)
    report = FaithfulnessReport(
        adapter, base, dtype, tol, len(inputs), float("nan"), max_abs_diff(reference, logits(candidate, inputs)), merged
    )
    report.in_memory = report.reloaded or 0.0
    if not report.passed:
        raise _unfaithful(report, f"checkpoint {merged}")
    return report


def _unfaithful(report: FaithfulnessReport, where: str) -> MergeFaithfulnessError:
    worst = max(report.in_memory, report.reloaded or 0.0)
    return MergeFaithfulnessError(
        f"merged model ({where}) differs from base + LoRA by {worst:.3g} in logits, above the tolerance "
        f"{report.tolerance:g} ({report.samples} sample inputs); nothing was published",
        max_abs_diff=worst,
        tolerance=report.tolerance,
    )
