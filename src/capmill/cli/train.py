"""`capmill train CONFIG.yaml`: LoRA fine-tuning of a captioner; flags override the file."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="training config (YAML); optional when flags say enough")
    parser.add_argument("--preset", help="a model card's recipe: json-captioner or blip2-lora")
    parser.add_argument("--base", help="base model: hub id or local folder")
    parser.add_argument("--out", help="run folder (checkpoints, loss.csv, loss.png, adapter/)")
    parser.add_argument(
        "--data", nargs="+", metavar="PATH", help="training data; replaces the config's stages with one"
    )
    parser.add_argument("--epochs", type=float, help="epochs for every stage")
    parser.add_argument("--max-steps", type=int, help="optimizer steps for every stage")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="learning rate")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--micro-batch-size", type=int, help="rows per forward pass (the rest accumulates)")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--init-adapter", help="continue this LoRA adapter (warm start)")
    parser.add_argument("--scaffold", help="system prompt + tools file for image-caption pairs")
    parser.add_argument("--prompt", help="user prompt for image-caption pairs")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.r=16"
    )
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run folder")
    parser.add_argument("--stop-after-steps", type=int, help="stop (with a checkpoint) after this many steps in total")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _set(target: dict[str, Any], dotted: str) -> None:
    import yaml

    from capmill.errors import ConfigError

    key, sep, value = dotted.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {dotted!r}: expected KEY=VALUE")
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flag values as a config overlay (only the flags given); --data replaces the stages with one."""
    out: dict[str, Any] = {}
    for name in ("preset", "base", "out", "learning_rate", "batch_size", "micro_batch_size", "max_length", "seed",
                 "init_adapter", "scaffold", "prompt", "device"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    if args.data:
        out["stages"] = [{"name": "train", "data": list(args.data)}]
    for item in args.set:
        _set(out, item)
    return out


def with_stage_lengths(config: Any, epochs: float | None, max_steps: int | None) -> Any:
    """--epochs / --max-steps apply to every stage (after the file's relative data paths are resolved)."""
    from capmill.train.config import build_config

    if epochs is None and max_steps is None:
        return config
    data = config.model_dump()
    for stage in data["stages"]:
        if epochs is not None:
            stage["epochs"] = epochs
        if max_steps is not None:
            stage["max_steps"] = max_steps
    return build_config(data)


def run(args: argparse.Namespace) -> int:
    from capmill.train.config import load_config
    from capmill.train.trainer import train

    config = with_stage_lengths(load_config(args.config, overrides(args)), args.epochs, args.max_steps)
    result = train(
        config,
        resume=not args.no_resume,
        progress=False if args.no_progress else None,
        stop_after=args.stop_after_steps,
    )
    summary = {
        "run": str(result.run_dir),
        "adapter": str(result.adapter_dir) if result.adapter_dir else None,
        "completed": result.completed,
        "steps": result.global_step,
        "last_loss": result.losses[-1] if result.losses else None,
        "rejected_rows": result.rejects,
        "already_finished": result.already_finished,
    }
    if args.json:
        print(json.dumps(summary))
    elif result.already_finished:
        print(
            f"{result.run_dir} holds a finished run ({result.global_step} steps): nothing to train; its adapter is "
            f"in {result.adapter_dir}. Choose another --out to train again."
        )
    elif result.completed:
        print(
            f"trained {result.global_step} steps; adapter in {result.adapter_dir}; loss log {result.run_dir / 'loss.csv'}"
        )
        if result.rejects:
            print(f"{result.rejects} rows were rejected: see {result.run_dir}/rejects-stage*.jsonl")
    else:
        print(f"stopped after {result.global_step} steps with a checkpoint; run the same command again to resume")
    return 0
