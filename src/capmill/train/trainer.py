"""The training loop: a curriculum of stages continuing one LoRA adapter, with checkpoints and resume.

A small loop rather than transformers.Trainer: vision-language batches (pixel tensors of varying length),
token-weighted gradient accumulation and stage-by-stage optimizers are simpler to get exactly right here.
The json-captioner card ran each stage as its own Trainer run (fresh AdamW, cosine schedule with 3% warm-up) on one adapter;
this loop does the same.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.errors import RunConflictError, TrainingError
from capmill.train import checkpoint as ckpt
from capmill.train.config import TrainConfig
from capmill.train.data import Example, Reject, RowError, load_examples
from capmill.train.masking import IGNORE, Encoder, collate
from capmill.train.metrics import LossLog, plot_loss


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path | None
    completed: bool
    global_step: int
    losses: list[float] = field(default_factory=list)
    rejects: int = 0
    already_finished: bool = False  # the run folder held a finished run: nothing was trained this time


def _device_and_dtype(config: TrainConfig):
    import torch

    device = torch.device(
        "cuda"
        if config.device == "auto" and torch.cuda.is_available()
        else (config.device if config.device != "auto" else "cpu")
    )
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    return device, dtype


def load_base(base: str, dtype: Any, device: Any):
    """The base model and processor through the same Auto classes a real checkpoint loads with."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from capmill.errors import ModelLoadError

    try:
        processor = AutoProcessor.from_pretrained(base)
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load base model {base!r}: {exc}") from None
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    return model.to(device), processor


def _prepare_run(config: TrainConfig, resume: bool) -> Path:
    import yaml

    run = config.run_dir()
    run.mkdir(parents=True, exist_ok=True)
    stored = run / "config.yaml"
    identity = config.identity()
    if stored.exists():
        before = yaml.safe_load(stored.read_text(encoding="utf-8")) or {}
        if before.get("identity") != json.loads(json.dumps(identity)):
            raise RunConflictError(f"run folder {run} holds a run with a different configuration; choose another --out")
        if not resume and ckpt.latest(run) is not None:
            raise RunConflictError(f"run folder {run} already has checkpoints; resume it or choose another --out")
    stored.write_text(
        yaml.safe_dump({"config": config.model_dump(), "identity": identity}, sort_keys=False), encoding="utf-8"
    )
    return run


def _write_rejects(run: Path, stage_index: int, rejects: list[Reject]) -> None:
    path = run / f"rejects-stage{stage_index:02d}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps({"source": r.source, "reason": r.reason}, ensure_ascii=False) + "\n")


def _scaffold(config: TrainConfig) -> tuple[str | None, list | None]:
    if not config.scaffold:
        return config.system_prompt, None
    from capmill.models.scaffold import load_scaffold

    sc = load_scaffold(config.scaffold)
    return config.system_prompt or sc.system_prompt, sc.tools


def train(
    config: TrainConfig, *, resume: bool = True, progress: bool | None = None, stop_after: int | None = None
) -> TrainResult:
    """Run (or resume) every stage; returns where the adapter was saved. ``stop_after`` ends after that many
    optimizer steps in total (a checkpoint is written), for jobs split across time-limited sessions."""
    import torch
    from transformers import get_scheduler

    from capmill.train.lora import attach

    run = _prepare_run(config, resume)
    adapter_dir = run / "adapter"
    if (adapter_dir / "capmill_train.json").exists():
        return TrainResult(run, adapter_dir, True, _done_steps(run), already_finished=True)
    device, dtype = _device_and_dtype(config)
    torch.manual_seed(config.seed)
    model, processor = load_base(config.base, dtype, device)
    model = attach(model, config.lora, config.init_adapter)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    last = ckpt.latest(run) if resume else None
    pos = ckpt.position(last) if last else ckpt.Position()
    if last:
        ckpt.restore_weights(last, model)
    tok = getattr(processor, "tokenizer", processor)
    pad_id = tok.pad_token_id
    encoder = Encoder(processor, max_length=config.max_length, enable_thinking=config.enable_thinking)
    system_prompt, tools = _scaffold(config)
    log = LossLog(run, resume_global_step=pos.global_step)
    losses: list[float] = []
    n_rejects = 0
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else _null()
    try:
        for si, stage in enumerate(config.stages):
            if si < pos.stage:
                continue
            examples, rejects = load_examples(
                stage.data, format=stage.format, where=stage.where, limit=stage.limit,
                prompt=config.prompt, system_prompt=system_prompt, tools=tools,
            )  # fmt: skip
            if not examples:
                _write_rejects(run, si, rejects)
                raise TrainingError(f"stage {stage.name!r}: no usable rows ({len(rejects)} rejected, see {run})")
            per_epoch = math.ceil(len(examples) / config.batch_size)
            total = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(
                params, lr=stage.learning_rate or config.learning_rate, weight_decay=config.weight_decay
            )
            schedule = {"constant": "constant_with_warmup"}.get(config.lr_scheduler, config.lr_scheduler)
            scheduler = get_scheduler(schedule, optimizer, math.ceil(config.warmup_ratio * total), total)
            cache = _EncodeCache(encoder, config.encode_cache_mb)
            start = pos.step if si == pos.stage else 0
            if last and si == pos.stage:
                if start > 0:  # mid-stage: the same optimizer continues; at a stage start it is fresh anyway
                    ckpt.restore_optimizer(last, optimizer, scheduler)
                ckpt.restore_rng(last)
            model.train()
            bar = _bar(total, start, f"stage {si + 1}/{len(config.stages)} {stage.name}", progress)
            t0 = time.perf_counter()
            seed = config.seed + 1000 * si

            # The next step's rows are decoded and tokenized on a worker thread while this step computes, so
            # image preprocessing does not leave the accelerator idle (torch releases the GIL while it works).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="capmill-encode") as pool:
                pending = (
                    pool.submit(_encode_step, cache, examples, start, per_epoch, config.batch_size, seed)
                    if start < total
                    else None
                )
                for step in range(start, total):
                    encoded, failed = pending.result()
                    rejects.extend(failed)
                    pending = (
                        pool.submit(_encode_step, cache, examples, step + 1, per_epoch, config.batch_size, seed)
                        if step + 1 < total
                        else None
                    )
                    loss_value, tokens = _optimizer_step(model, optimizer, encoded, config, pad_id, device, autocast)
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    pos = ckpt.Position(si, step + 1, pos.global_step + 1)
                    losses.append(loss_value)
                    if step % config.logging_steps == 0 or step + 1 == total:
                        log.log({
                            "stage": si, "stage_name": stage.name, "step": step + 1, "global_step": pos.global_step,
                            "epoch": round((step + 1) / per_epoch, 4), "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                            "tokens": tokens, "seconds": round(time.perf_counter() - t0, 3),
                        })  # fmt: skip
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    stopping = stop_after is not None and pos.global_step >= stop_after
                    if (step + 1) % config.save_steps == 0 or stopping:
                        ckpt.save(run, pos, model, optimizer, scheduler, config.keep_checkpoints)
                    if stopping and step + 1 < total:
                        bar.close()
                        return TrainResult(run, None, False, pos.global_step, losses, n_rejects + len(rejects))
            bar.close()
            _write_rejects(run, si, _unique(rejects))
            n_rejects += len(_unique(rejects))
            pos = ckpt.Position(si + 1, 0, pos.global_step)
            ckpt.save(run, pos, model, optimizer, scheduler, config.keep_checkpoints)
            model.save_pretrained(run / "stages" / f"{si:02d}-{stage.name}")
            if stop_after is not None and pos.global_step >= stop_after and si + 1 < len(config.stages):
                return TrainResult(run, None, False, pos.global_step, losses, n_rejects)
    finally:
        log.close()
    _save_adapter(model, processor, config, adapter_dir, pos.global_step)
    plot_loss(run / "loss.csv", run / "loss.png")
    return TrainResult(run, adapter_dir, True, pos.global_step, losses, n_rejects)


def _optimizer_step(model, optimizer, encoded, config, pad_id, device, autocast) -> tuple[float, int]:
    """Forward/backward over micro-batches, each weighted by its share of label tokens; then one update."""
    import torch

    if not encoded:
        return float("nan"), 0
    micro = [encoded[i : i + config.micro] for i in range(0, len(encoded), config.micro)]
    counts = [sum(int((r["labels"] != IGNORE).sum()) for r in m) for m in micro]
    total_tokens = max(1, sum(counts))
    loss_sum = 0.0
    for rows, n in zip(micro, counts, strict=True):
        batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
        with autocast:
            out = model(**batch)
        scaled = out.loss * (n / total_tokens)
        scaled.backward()
        loss_sum += float(scaled.detach())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
    optimizer.step()
    return loss_sum, total_tokens


def _batch_rows(n: int, step: int, per_epoch: int, batch_size: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step``: a fixed shuffle per epoch, so a resumed run sees the same batches."""
    import torch

    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[index * batch_size : (index + 1) * batch_size]


def _encode_step(cache, examples: list[Example], step: int, per_epoch: int, batch_size: int, seed: int):
    """Encoded rows of one optimizer step, and rejects for rows that cannot train."""
    rows, failed = [], []
    for i in _batch_rows(len(examples), step, per_epoch, batch_size, seed):
        try:
            rows.append(cache.get(i, examples[i]))
        except RowError as exc:
            failed.append(Reject(examples[i].source, str(exc)))
    return rows, failed


class _EncodeCache:
    """Encoded rows kept across epochs up to a memory budget (small data re-encoded every epoch is mostly image
    preprocessing); rows that fail to encode fail the same way every time."""

    def __init__(self, encoder: Encoder, budget_mb: int):
        self.encoder, self.budget, self.used = encoder, budget_mb * 2**20, 0
        self.rows: dict[int, dict[str, Any]] = {}
        self.failed: dict[int, RowError] = {}

    def get(self, index: int, example: Example) -> dict[str, Any]:
        if index in self.rows:
            return self.rows[index]
        if index in self.failed:
            raise self.failed[index]
        try:
            row = self.encoder(example)
        except RowError as exc:
            self.failed[index] = exc
            raise
        size = sum(v.numel() * v.element_size() for v in row.values())
        if self.used + size <= self.budget:
            self.rows[index] = row
            self.used += size
        return row


def _save_adapter(model, processor, config: TrainConfig, out: Path, steps: int) -> None:
    """The final adapter with the processor and chat template beside it, so merge and inference find them."""
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "capmill_train.json").write_text(
        json.dumps({"base": config.base, "steps": steps, "config": config.model_dump()}, indent=1), encoding="utf-8"
    )
    import os
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _done_steps(run: Path) -> int:
    meta = json.loads((run / "adapter" / "capmill_train.json").read_text(encoding="utf-8"))
    return int(meta.get("steps", 0))


def _unique(rejects: list[Reject]) -> list[Reject]:
    seen, out = set(), []
    for r in rejects:
        if (r.source, r.reason) not in seen:
            seen.add((r.source, r.reason))
            out.append(r)
    return out


def _bar(total: int, initial: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="step", disable=(None if progress is None else not progress)
    )


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
