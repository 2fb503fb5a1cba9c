"""The report's plots: matplotlib figures (Agg, no display) embedded in the HTML as PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any


def png(fig: Any) -> str:
    """The figure as an <img> with a PNG data URI (the report stays one self-contained file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


BOUNDED_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "SPICE")  # scores in [0, 1]


def bar_figure(
    title: str, labels: list[str], series: dict[str, list[float]], ylabel: str = "", top: float | None = None
) -> Any:
    """Grouped bars (one group per label, one bar per run), each labelled with its value.

    The y axis starts at 0 and reaches at least `top` (1.0 for scores bounded by 1), so a METEOR of 0.0012 is
    drawn as the sliver it is instead of filling the plot, as autoscaling would make it.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(labels))
    for i, (name, vals) in enumerate(series.items()):
        drawn = ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
        ax.bar_label(drawn, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    finite = [v for vals in series.values() for v in vals if np.isfinite(v)]
    highest = max(finite, default=0.0)
    ax.set_ylim(0.0, max(top or 0.0, highest * 1.15) or 1.0)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def bars(
    title: str, labels: list[str], series: dict[str, list[float]], ylabel: str = "", top: float | None = None
) -> str:
    return png(bar_figure(title, labels, series, ylabel, top))


def reference_metric_figures(runs: dict[str, Any]) -> list[Any]:
    """The scores bounded by 1 on a 0-1 axis; CIDEr (0-10) on its own axis reaching at least 1."""
    names = list(runs)
    figures = []
    for keys, title, top in (
        ([k for k in BOUNDED_METRICS], "Reference metrics (higher is better)", 1.0),
        (["CIDEr"], "CIDEr (higher is better)", 1.0),
    ):
        present = [k for k in keys if any(k in (r.get("coco") or {}) for r in runs.values())]
        if present:
            series = {n: [(runs[n].get("coco") or {}).get(k, 0.0) for k in present] for n in names}
            figures.append(bar_figure(title, present, series, top=top))
    return figures


def plots(data: dict[str, Any]) -> list[str]:
    """Every plot the data supports: reference metrics, distances, lengths, status, QA categories, per-item CIDEr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = data["runs"]
    names = list(runs)
    out = []
    coco_keys = [k for k in (*BOUNDED_METRICS, "CIDEr") if any(k in (r.get("coco") or {}) for r in runs.values())]
    out.extend(png(fig) for fig in reference_metric_figures(runs))
    if any(r.get("embedding") for r in runs.values()):
        out.append(
            bars(
                "Embedding distances (lower is better)",
                ["per-pair FGD", "set Frechet"],
                {
                    n: [
                        (runs[n].get("embedding") or {}).get("pair_fgd", 0.0),
                        (runs[n].get("embedding") or {}).get("set_frechet", 0.0),
                    ]
                    for n in names
                },
            )
        )
    lengths = {n: [i.get("clip_tokens") for i in runs[n]["items"] if i.get("clip_tokens") is not None] for n in names}
    if any(lengths.values()):
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        top = max(80, max(max(v) for v in lengths.values() if v) + 1)
        ax.hist([lengths[n] for n in names], bins=np.linspace(0, top, 41), label=names, alpha=0.85)
        ax.axvline(77, color="red", linestyle="--", linewidth=1, label="CLIP limit 77")
        ax.set_title("Caption length in CLIP tokens")
        ax.set_xlabel("tokens")
        ax.set_ylabel("captions")
        ax.legend(fontsize=8)
        out.append(png(fig))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    left = [0.0] * len(names)
    colors = {"ok": "#4caf50", "repaired": "#8bc34a", "invalid": "#ff9800", "error": "#f44336"}
    for status, color in colors.items():
        vals = [runs[n]["structure"]["status_rates"][status] for n in names]
        ax.barh(names, vals, left=left, color=color, label=status)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_title("Parse status share")
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.45))
    out.append(png(fig))
    cats = sorted({c for r in runs.values() for c in (r.get("qa") or {}).get("per_category", {})})
    if cats:
        out.append(
            bars(
                "QA utility accuracy per category",
                cats,
                {
                    n: [(runs[n].get("qa") or {}).get("per_category", {}).get(c, {}).get("accuracy", 0.0) for c in cats]
                    for n in names
                },
                "accuracy",
                top=1.0,
            )
        )
    if "CIDEr" in coco_keys:
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        ax.boxplot([[i["CIDEr"] for i in runs[n]["items"] if "CIDEr" in i] or [0.0] for n in names])
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_title("Per-item CIDEr")
        out.append(png(fig))
    return out
