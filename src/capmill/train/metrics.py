"""Loss logging for a run folder: loss.csv (always), TensorBoard events (when installed), loss.png (matplotlib)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FIELDS = ["stage", "stage_name", "step", "global_step", "epoch", "loss", "lr", "tokens", "seconds"]


class LossLog:
    """Append-only loss log; on resume, rows past the checkpoint are dropped so no step is logged twice."""

    def __init__(self, run_dir: Path, resume_global_step: int = 0):
        self.path = run_dir / "loss.csv"
        rows = read_loss(self.path) if self.path.exists() else []
        kept = [r for r in rows if int(r["global_step"]) <= resume_global_step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._csv = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._tb = _tensorboard(run_dir / "tensorboard")

    def log(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in FIELDS})
        self._file.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", row["loss"], row["global_step"])
            self._tb.add_scalar("train/lr", row["lr"], row["global_step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV is the record
        return None
    return SummaryWriter(log_dir=str(path))


def read_loss(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_loss(csv_path: Path, png_path: Path) -> Path | None:
    """Loss against global step, one colour per stage; None when matplotlib is missing or nothing was logged."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_loss(csv_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for stage in sorted({r["stage"] for r in rows}, key=int):
        part = [r for r in rows if r["stage"] == stage]
        ax.plot([int(r["global_step"]) for r in part], [float(r["loss"]) for r in part], label=part[0]["stage_name"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
