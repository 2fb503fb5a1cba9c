"""The side-by-side report: metrics.json with every number, index.html with tables and plots, worst.html with
the weakest items of each run (thumbnail when the image file is at hand, caption, references, scores, flags)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from capmill.eval.report_plots import plots
from capmill.eval.suite import headline

LOWER_IS_BETTER = ("FGD", "Frechet", "degenerate", " over ")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px} th,td{border:1px solid #ddd;padding:4px 8px}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:#e3f4e1;font-weight:600} .muted{color:#777;font-size:13px} .note{background:#fff8e1;padding:6px 10px}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0} .plots{display:flex;flex-wrap:wrap;gap:8px}
.plots img{width:580px} .item{display:flex;gap:12px;border-bottom:1px solid #eee;padding:8px 0}
.item img{width:160px;height:auto;object-fit:contain} .flag{background:#fde2e1;color:#900;padding:1px 6px;border-radius:4px;
font-size:12px;margin-right:4px} ul.refs{margin:4px 0;padding-left:18px;color:#555;font-size:13px}
.item>div{min-width:0;flex:1} .item div,.item li,td{overflow-wrap:anywhere;word-break:break-word}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]], best: list[int | None] | None = None) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = []
    for ri, row in enumerate(rows):
        cells = []
        for ci, v in enumerate(row):
            cls = "num" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            if best and best[ri] is not None and ci == best[ri]:
                cls += " best"
            cells.append(f'<td class="{cls.strip()}">{_fmt(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _side_by_side(data: dict[str, Any]) -> str:
    runs = data["runs"]
    heads = {n: headline(r) for n, r in runs.items()}
    keys = list(dict.fromkeys(k for h in heads.values() for k in h))
    rows, best = [], []
    for k in keys:
        vals = [heads[n].get(k, float("nan")) for n in runs]
        rows.append([k, *vals])
        finite = [(v, i) for i, v in enumerate(vals) if not math.isnan(v)]
        neutral = "tokens (mean" in k  # length is a property, not a score
        if len(runs) > 1 and finite and len({v for v, _ in finite}) > 1 and not neutral:
            pick = min(finite) if any(t in f" {k} " for t in LOWER_IS_BETTER) else max(finite)
            best.append(pick[1] + 1)
        else:
            best.append(None)
    return _table(["metric", *runs], rows, best)


def _structure_tables(data: dict[str, Any]) -> str:
    runs = data["runs"]
    parts = []
    statuses = ["ok", "repaired", "invalid", "error"]
    parts.append(
        "<h3>Parse status</h3>"
        + _table(
            ["run", *statuses, "unreadable lines"],
            [
                [n, *[r["structure"]["status_counts"][s] for s in statuses], r["run"]["unreadable_lines"]]
                for n, r in runs.items()
            ],
        )
    )
    kinds = ["empty", "repetition_loop", "truncated", "refusal"]
    parts.append(
        "<h3>Degenerate outputs</h3>"
        + _table(
            ["run", *kinds, "share"],
            [
                [n, *[r["structure"]["degenerate_counts"][k] for k in kinds], r["structure"]["degenerate_rate"]]
                for n, r in runs.items()
            ],
        )
    )
    viol = sorted({k for r in runs.values() for k in r["structure"]["schema_violations"]})
    if viol:
        parts.append(
            "<h3>Schema violations (structured captions)</h3>"
            + _table(
                ["run", *viol],
                [[n, *[r["structure"]["schema_violations"].get(k, 0) for k in viol]] for n, r in runs.items()],
            )
        )
    reported = sorted({k for r in runs.values() for k in r["structure"]["reported_problems"]})
    if reported:
        parts.append(
            "<h3>Problems reported by the parser</h3>"
            + _table(
                ["run", *reported],
                [[n, *[r["structure"]["reported_problems"].get(k, 0) for k in reported]] for n, r in runs.items()],
            )
        )
    if any("fields" in r["structure"] for r in runs.values()):
        rows = []
        for n, r in runs.items():
            f = r["structure"].get("fields")
            if not f:
                continue
            shares = ", ".join(f"{k} {v:.0%}" for k, v in f["setting_shares"].items())
            rows.append(
                [
                    n,
                    f["subjects_per_caption"].get("mean", float("nan")),
                    f["attributes_per_subject"].get("mean", float("nan")),
                    f["actions_per_caption"].get("mean", float("nan")),
                    shares,
                ]
            )
        parts.append(
            "<h3>Structured fields</h3>"
            + _table(["run", "subjects / caption", "attributes / subject", "actions / caption", "setting"], rows)
        )
    if any("grounding" in r["structure"] for r in runs.values()):
        rows = [
            [
                n,
                g["text_records"],
                g["with_grounding"],
                g["mean_rate"] if g["mean_rate"] is not None else "–",
                g["fully_grounded_share"] if g["fully_grounded_share"] is not None else "–",
            ]
            for n, r in runs.items()
            if (g := r["structure"].get("grounding"))
        ]
        parts.append(
            "<h3>Grounding (text mode)</h3>"
            + _table(["run", "text records", "with grounding", "mean rate", "fully grounded"], rows)
        )
    rows = []
    for n, r in runs.items():
        for enc, ln in r["structure"]["lengths"].items():
            rows.append(
                [
                    n,
                    enc,
                    ln["tokenizer"],
                    ln.get("mean", float("nan")),
                    ln.get("p95", float("nan")),
                    ln.get("max", float("nan")),
                    f"{ln['over_limit']} (> {ln['limit']})",
                ]
            )
    parts.append(
        "<h3>Caption length in encoder tokens</h3>"
        + _table(["run", "encoder", "tokenizer", "mean", "p95", "max", "over limit"], rows)
    )
    return "".join(parts)


def _qa_tables(data: dict[str, Any]) -> str:
    runs = {n: r for n, r in data["runs"].items() if r.get("qa")}
    if not runs:
        return ""
    cats = sorted({c for r in runs.values() for c in r["qa"]["per_category"]})
    rows = [
        [
            n,
            r["qa"]["accuracy"],
            *[r["qa"]["per_category"].get(c, {}).get("accuracy", float("nan")) for c in cats],
            r["qa"]["cannot_answer_rate"],
            r["qa"]["unparsed_rate"],
            r["qa"]["missing_captions"],
        ]
        for n, r in runs.items()
    ]
    first = next(iter(runs.values()))["qa"]
    return (
        f"<h2>QA utility (CapRL / Prism)</h2><p class='muted'>{first['questions']} questions, "
        f"{first['samples']} samples each (options reshuffled per sample).</p>"
        + _table(["run", "accuracy", *cats, "'cannot answer'", "unparsed", "no caption"], rows)
    )


def _thumb(source: str) -> str:
    p = Path(source)
    if not source or not p.is_file():
        return ""
    try:
        from PIL import Image

        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((160, 160))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
        return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    except Exception:  # an unreadable image only loses its thumbnail
        return ""


def _worst_page(data: dict[str, Any], n: int) -> str:
    parts = ["<h1>Weakest items per run</h1><p><a href='index.html'>back to the report</a></p>"]
    for name, run in data["runs"].items():
        items = run["items"]
        if any("CIDEr" in i for i in items):
            _key, _rev, label = "CIDEr", False, "lowest CIDEr"
            ranked = sorted((i for i in items if "CIDEr" in i), key=lambda i: i["CIDEr"])
        elif any("pair_sq_dist" in i for i in items):
            _key, _rev, label = "pair_sq_dist", True, "largest caption-reference distance"
            ranked = sorted((i for i in items if "pair_sq_dist" in i), key=lambda i: -i["pair_sq_dist"])
        elif any("clip_score" in i for i in items):
            label = "lowest CLIPScore"
            ranked = sorted((i for i in items if "clip_score" in i), key=lambda i: i["clip_score"])
        else:
            label = "failed or degenerate first"
            ranked = sorted(items, key=lambda i: (i["status"] in ("ok", "repaired"), not i.get("degenerate")))
        parts.append(f"<h2>{html.escape(name)} <span class='muted'>({label})</span></h2>")
        for i in ranked[:n]:
            flags = "".join(f"<span class='flag'>{html.escape(k)}</span>" for k in i.get("degenerate", []))
            if i["status"] not in ("ok", "repaired"):
                flags += f"<span class='flag'>{html.escape(i['status'])}</span>"
            scores = ", ".join(
                f"{k} {_fmt(i[k])}"
                for k in ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "pair_sq_dist", "clip_score", "clip_tokens")
                if k in i
            )
            refs = "".join(f"<li>{html.escape(r)}</li>" for r in i.get("references", [])[:5])
            caption = (
                html.escape(i["caption"])
                if i.get("caption")
                else f"<i>no caption</i> {html.escape(i.get('error') or '')}"
            )
            parts.append(
                f"<div class='item'>{_thumb(i.get('source', ''))}<div><b>{html.escape(i['id'])}</b> {flags}"
                f"<div>{caption}</div><div class='muted'>{scores}</div><ul class='refs'>{refs}</ul></div></div>"
            )
        missed = sorted((q for q in run.get("qa_questions", []) if q["accuracy"] < 1.0), key=lambda q: q["accuracy"])
        if missed:
            parts.append(f"<h3>{html.escape(name)}: questions the captions did not answer</h3>")
            rows = [
                [
                    q["qid"],
                    q["image_id"],
                    q["category"],
                    q["question"],
                    q["expected"],
                    q["accuracy"],
                    _answers(q["responses"]),
                ]
                for q in missed[:n]
            ]
            parts.append(_table(["id", "image", "category", "question", "expected", "accuracy", "answers"], rows))
    return _page("capmill eval: weakest items", "".join(parts))


def _answers(responses: list[dict[str, Any]]) -> str:
    """ "Kitchen x3 | Garage": what the answerer chose (or wrote), identical answers counted."""
    seen = Counter((r.get("chosen") or r.get("response") or r.get("error") or "unparsed")[:60] for r in responses)
    return " | ".join(f"{a} x{c}" if c > 1 else a for a, c in seen.most_common()) or "no caption"


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


def write_report(data: dict[str, Any], out_dir: str | Path, worst: int = 20) -> Path:
    """Write metrics.json, index.html and worst.html into out_dir; returns the index path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(
        json.dumps(_clean(data), indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8"
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in data.get("notes", []))
    runs = "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(r['run']['path'])} ({r['run']['records']} records"
        f"{', model ' + html.escape(r['run']['model']) if r['run']['model'] else ''})</li>"
        for n, r in data["runs"].items()
    )
    refs = data.get("references") or {}
    emb = data.get("embedder") or {}
    meta = (
        f"<p class='muted'>capmill {data['capmill_version']} · {data['created']} · references "
        f"{html.escape(str(refs.get('path', 'none')))} ({refs.get('images', 0)} images)"
        + (f" · embedder {html.escape(str(emb.get('model')))}" if emb else "")
        + "</p>"
    )
    body = (
        f"<h1>Caption evaluation</h1>{meta}<ul>{runs}</ul>{notes}"
        f"<p><a href='worst.html'>Weakest items per run</a> · <a href='metrics.json'>metrics.json</a></p>"
        f"<h2>Side by side</h2><p class='muted'>Best value per row in green. Per-pair FGD: mean squared distance "
        f"between each caption's embedding and its references' (Fréchet GTE Distance). Set Frechet: FID-style distance "
        f"between the caption and reference embedding distributions.</p>{_side_by_side(data)}"
        f"<h2>Plots</h2><div class='plots'>{''.join(plots(data))}</div>"
        f"{_qa_tables(data)}<h2>Structure</h2>{_structure_tables(data)}"
    )
    (out / "index.html").write_text(_page("capmill eval", body), encoding="utf-8")
    (out / "worst.html").write_text(_worst_page(data, worst), encoding="utf-8")
    return out / "index.html"


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN and infinities become null (strict JSON has no NaN), numpy scalars plain numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None
