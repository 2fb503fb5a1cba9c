"""Fixtures for training tests: small chat-format JSONL in the json-coco-format shape, and LoRA adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

INDOOR = {"kitchen", "room", "table", "bathroom", "bed", "desk", "oven", "stove", "sofa", "counter"}


def structured(caption: str) -> dict:
    """A plausible structured caption for a COCO caption (test data only: the longest words become subjects)."""
    words = [w.strip(".,").lower() for w in caption.split()]
    nouns = sorted({w for w in words if len(w) > 4}, key=lambda w: (-len(w), w))[:2] or [words[-1]]
    setting = "indoor" if INDOOR & set(words) else "outdoor"
    return {"subjects": [{"name": n, "attributes": []} for n in nouns], "actions": [], "setting": setting}


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory, coco_rows) -> Path:
    """24 rows shaped like AbstractPhil/json-coco-format task_1: system, user caption, assistant tool call, tools."""
    from capmill.schema import EMIT_CAPTION_TOOL

    path = tmp_path_factory.mktemp("chat") / "task.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in coco_rows:
            for caption in row["captions"][:2]:
                call = {
                    "type": "function",
                    "function": {"name": "emit_caption_schema", "arguments": json.dumps(structured(caption))},
                }
                messages = [
                    {"role": "system", "content": "Convert the caption into the structured caption schema."},
                    {"role": "user", "content": caption},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                ]
                f.write(json.dumps({"messages": messages, "tools": [EMIT_CAPTION_TOOL], "grounded": True}) + "\n")
    return path


@pytest.fixture(scope="session")
def pairs_jsonl() -> Path:
    """Image-caption pairs: the COCO test photos with their reference captions (one example per caption)."""
    return Path(__file__).parents[1] / "data" / "coco" / "images.jsonl"


def make_adapter(base: Path, out: Path, *, scale: float = 0.3, seed: int = 0, r: int = 4) -> Path:
    """A LoRA adapter with non-zero B matrices (as after training), saved the way peft saves one."""
    import torch
    import transformers

    from capmill.train.config import LoraOptions
    from capmill.train.lora import attach

    model = transformers.AutoModelForImageTextToText.from_pretrained(base)
    targets = ["q", "k", "v"] if model.config.model_type == "blip-2" else LoraOptions().target_modules
    peft_model = attach(model, LoraOptions(r=r, alpha=2 * r, dropout=0.0, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale, generator=gen)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_factory():
    """``adapter_factory(base, out, scale=..., seed=..., r=...) -> Path`` (see make_adapter)."""
    return make_adapter
