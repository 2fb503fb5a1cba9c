"""One evaluation over several runs: matches records to references and gathers every number into one dict
(the content of metrics.json), which the report renders."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capmill import __version__
from capmill.eval.coco_metrics import coco_scores, parse_metrics
from capmill.eval.frechet import embedding_distances
from capmill.eval.lengths import LengthEncoder
from capmill.eval.qa_utility import QAItem, evaluate_qa
from capmill.eval.refs import References
from capmill.eval.results import Run
from capmill.eval.structure import structure_stats

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What to compute. Empty `metrics` means every COCO metric; embedder/answerer None skip those parts."""

    metrics: list[str] = field(default_factory=list)
    embedder: Any = None  # capmill.eval.embeddings.Embedder
    encoders: list[LengthEncoder] = field(default_factory=list)
    qa_items: list[QAItem] | None = None
    answerer: Any = None  # capmill Engine
    qa_samples: int = 4
    qa_decoding: Any = None
    qa_seed: int = 0
    coco: bool = True
    image_text: Any = None  # capmill.quality.clip_score.ClipScorer: reference-free CLIPScore
    notes: list[str] = field(default_factory=list)  # set while configuring (e.g. an embedder fallback)


def evaluate_runs(runs: list[Run], refs: References | None, config: EvalConfig) -> dict[str, Any]:
    """Every number for every run; per-item values under runs[name]["items"]."""
    out: dict[str, Any] = {
        "capmill_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "references": {"path": refs.source, "images": len(refs)} if refs else None,
        "embedder": config.embedder.describe() if config.embedder is not None else None,
        "notes": list(config.notes),
        "runs": {},
    }
    for run in runs:
        out["runs"][run.name] = _evaluate_run(run, refs, config, out["notes"])
    out["notes"] = sorted(set(out["notes"]))
    return out


def _evaluate_run(run: Run, refs: References | None, config: EvalConfig, notes: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"run": run.describe(), "problems": run.problems[:50]}
    structure, per_struct = structure_stats(run.records, config.encoders)
    res["structure"] = structure
    items: dict[str, dict[str, Any]] = {}
    for r in run.records:
        items[r.id] = {
            "id": r.id,
            "source": r.source,
            "status": r.status,
            "caption": r.caption,
            "error": r.error,
            **per_struct.get(r.id, {}),
        }
    if refs is not None:
        keyed: dict[str, str] = {}  # reference key -> record id
        for r in run.records:
            key = refs.key_for(r.id, r.source, r.meta.get("image_id") if r.meta else None)
            if key is not None and key not in keyed:
                keyed[key] = r.id
                items[r.id]["ref_key"] = key
                items[r.id]["references"] = refs.captions[key]
        by_id = {r.id: r for r in run.records}
        without_caption = [k for k, rid in keyed.items() if not by_id[rid].caption]
        res["matching"] = {
            "records": len(run.records),
            "with_references": len(keyed),
            "without_references": len(run.records) - len(keyed),
            "without_caption": len(without_caption),
        }
        if not keyed:
            notes.append(f"run {run.name}: no record matched a reference id; reference metrics skipped")
        if keyed and config.coco:
            gts = {k: refs.captions[k] for k in keyed}
            hyp = {k: by_id[rid].caption or "" for k, rid in keyed.items()}  # a failed item scores as empty
            scores = coco_scores(gts, hyp, parse_metrics(config.metrics))
            notes.extend(scores.notes)
            res["coco"] = scores.corpus
            for k, vals in scores.per_item.items():
                items[keyed[k]].update(vals)
        if keyed and config.embedder is not None:
            have = [(k, rid) for k, rid in keyed.items() if by_id[rid].caption]
            if have:
                cap_texts = [by_id[rid].caption for _, rid in have]
                config.embedder.encode(cap_texts + [c for k, _ in have for c in refs.captions[k]])  # one batched pass
                caps = config.embedder.encode(cap_texts)
                ref_vecs = [config.embedder.encode(refs.captions[k]) for k, _ in have]
                dist = embedding_distances([rid for _, rid in have], caps, ref_vecs)
                res["embedding"] = dist.as_dict()
                if dist.warning():
                    notes.append(f"run {run.name}: {dist.warning()}")
                res["embedding"]["excluded_without_caption"] = len(without_caption)
                for rid, v in dist.per_item.items():
                    items[rid]["pair_sq_dist"] = v
    if config.image_text is not None:
        from capmill.eval.image_text import image_text_scores

        summary, per_item = image_text_scores(run.records, config.image_text, notes, run.name)
        if summary:
            res["image_text"] = summary
            for rid, values in per_item.items():
                items[rid].update(values)
    if config.qa_items and config.answerer is not None:
        captions = _captions_by_image(run, config.qa_items)
        qa = evaluate_qa(
            config.qa_items,
            captions,
            config.answerer,
            samples=config.qa_samples,
            decoding=config.qa_decoding,
            seed=config.qa_seed,
        )
        res["qa"] = qa.as_dict()
        res["qa_questions"] = qa.per_question
    res["items"] = list(items.values())
    return res


def _captions_by_image(run: Run, qa_items: list[QAItem]) -> dict[str, str | None]:
    """image_id of each QA item -> this run's caption of that image (matched like references)."""
    index = References()
    for r in run.records:
        index.alias(r.id, r.id, r.source)
    out: dict[str, str | None] = {}
    by_id = {r.id: r for r in run.records}
    for item in qa_items:
        rid = index.key_for(item.image_id)
        out[item.image_id] = by_id[rid].caption if rid else None
    return out


def headline(run_result: dict[str, Any]) -> dict[str, float]:
    """The few numbers shown side by side for each run."""
    row: dict[str, float] = {}
    for k, v in (run_result.get("coco") or {}).items():
        row[k] = v
    emb = run_result.get("embedding") or {}
    if emb:
        row["pair FGD"] = emb["pair_fgd"]
        row["set Frechet"] = emb["set_frechet"]
    if run_result.get("image_text"):
        row["CLIPScore"] = run_result["image_text"]["clip_score"]
    qa = run_result.get("qa") or {}
    if qa:
        row["QA accuracy"] = qa["accuracy"]
    st = run_result["structure"]
    row["parse success"] = st["parse_success_rate"]
    row["degenerate"] = st["degenerate_rate"]
    for name, ln in st["lengths"].items():
        if ln.get("n"):
            row[f"{name} tokens (mean{'' if ln['exact'] else ', approx'})"] = ln["mean"]
            row[f"{name} over {ln['limit']}"] = ln["over_limit_rate"]
    return {k: float(v) if v is not None and np.isfinite(v) else float("nan") for k, v in row.items()}
