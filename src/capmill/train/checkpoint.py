"""Resumable checkpoints: adapter weights, optimizer, scheduler, RNG states and the position in the curriculum.

A checkpoint folder is written under a temporary name and renamed when complete, so a crash never leaves a
half-written checkpoint that a resume would trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Position:
    """Where training stands: the stage index and the next optimizer step within it."""

    stage: int = 0
    step: int = 0
    global_step: int = 0


def _name(pos: Position) -> str:
    return f"stage{pos.stage:02d}-step{pos.step:07d}"


def save(run_dir: Path, pos: Position, model: Any, optimizer: Any, scheduler: Any, keep: int) -> Path:
    import numpy as np
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(pos)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "position.json").write_text(json.dumps(asdict(pos)), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "position.json").exists() and not p.name.startswith(".")
    )
    return done[-1] if done else None


def position(ckpt: Path) -> Position:
    return Position(**json.loads((ckpt / "position.json").read_text(encoding="utf-8")))


def restore_weights(ckpt: Path, model: Any) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter.safetensors")))


def restore_optimizer(ckpt: Path, optimizer: Any, scheduler: Any) -> None:
    import torch

    state = torch.load(ckpt / "optim.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def restore_rng(ckpt: Path) -> None:
    """Python, NumPy and torch RNG states as they were at the checkpoint (LoRA dropout draws from torch's)."""
    import numpy as np
    import torch

    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
