"""Structure of a run's output: parse status rates, schema violations, grounding, field statistics, lengths and
degenerate outputs (repetition loops, truncation, refusals, empty captions)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from capmill.eval.lengths import LengthEncoder
from capmill.quality.degenerate import WORD, is_loop, is_refusal
from capmill.records import STATUSES, Record

SETTINGS = ("indoor", "outdoor", "unknown")
_FIELDS = {"subjects", "actions", "setting", "style", "mood"}


def schema_violations(structured: Any) -> list[str]:
    """Kinds of rule the structured caption breaks (the json-captioner's schema); [] when it is valid."""
    if not isinstance(structured, dict):
        return ["not_an_object"]
    kinds = [f"unknown_field:{k}" for k in structured if k not in _FIELDS]
    subjects = structured.get("subjects", [])
    if not isinstance(subjects, list):
        kinds.append("subjects_not_a_list")
        subjects = []
    if len(subjects) > 8:
        kinds.append("too_many_subjects")
    for s in subjects:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            kinds.append("subject_without_name")
            continue
        if not 1 <= len(s["name"]) <= 64:
            kinds.append("subject_name_length")
        attrs = s.get("attributes", [])
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            kinds.append("attributes_not_strings")
        elif len(attrs) > 8:
            kinds.append("too_many_attributes")
    actions = structured.get("actions", [])
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        kinds.append("actions_not_strings")
    elif len(actions) > 8:
        kinds.append("too_many_actions")
    if structured.get("setting", "unknown") not in SETTINGS:
        kinds.append("bad_setting")
    for k in ("style", "mood"):
        if structured.get(k) is not None:
            kinds.append(f"{k}_not_null")
    return sorted(set(kinds))


def _note_kind(text: str) -> str:
    """A parser note or error without its particulars (quoted values, numbers, previews), so notes group by kind:
    "subjects: 9 items, at most 8 allowed; dropped 'x'" -> "subjects: # items, at most # allowed"."""
    t = text.lower().split(";", 1)[0]
    t = re.sub(r"'[^']*'|\"[^\"]*\"", "", t)
    t = re.sub(r"\s=\s.*$|\{.*$|\([^)]*\)", "", t)
    t = re.sub(r"\[[^\]]*\]", "[]", t)
    t = re.sub(r"\d+(?:\.\d+)?", "#", t)
    head, _, rest = t.partition(":")
    if re.fullmatch(r"[a-z]+(?:_[a-z]+)+", head.strip()):  # already a kind: "too_many_subjects: ..."
        return head.strip()
    words = head.split()
    if len(words) < 3 and rest.strip():
        words = [*words[:-1], words[-1] + ":", *rest.split()[:6]] if words else rest.split()[:6]
    return " ".join(words).strip(" ,.:") or "unspecified"


def degenerate_kinds(record: Record) -> list[str]:
    """Why an output looks degenerate: empty, repetition_loop, truncated, refusal ([] when it looks fine)."""
    text = record.caption if record.caption is not None else (record.raw or "")
    kinds = []
    if record.ok and not text.strip() and not record.structured:
        kinds.append("empty")
    if is_loop(text):
        kinds.append("repetition_loop")
    if _truncated(record):
        kinds.append("truncated")
    if is_refusal(text):
        kinds.append("refusal")
    return kinds


def _truncated(record: Record) -> bool:
    finish = record.meta.get("finish_reason") or record.timings.get("finish_reason")
    if finish == "length" or any("max_new_tokens" in n or "cut off" in n for n in record.notes or []):
        return True
    limit = (record.decoding or {}).get("max_new_tokens")
    used = (record.tokens or {}).get("completion") or (record.tokens or {}).get("completion_tokens")
    if limit and used and used >= limit:
        return True
    raw = record.raw or ""
    return "<tool_call>" in raw and "</tool_call>" not in raw


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "min": float(a.min()),
    }


def _grounding_rate(g: Any) -> float | None:
    if not isinstance(g, dict):
        return None
    for key in ("rate", "grounding_rate", "score"):
        if isinstance(g.get(key), (int, float)):
            return float(g[key])
    if isinstance(g.get("grounded"), bool):
        return 1.0 if g["grounded"] else 0.0
    return None


def structure_stats(records: list[Record], encoders: list[LengthEncoder]) -> tuple[dict[str, Any], dict[str, dict]]:
    """Run-level structure numbers and per-item details (lengths, violations, degenerate kinds) by record id."""
    n = len(records)
    status = Counter(r.status for r in records)
    per_item: dict[str, dict] = {}
    violations: Counter[str] = Counter()
    reported: Counter[str] = Counter()
    degenerate: Counter[str] = Counter()
    lengths: dict[str, list[int]] = {e.name: [] for e in encoders}
    words: list[int] = []
    subjects, attributes, actions = [], [], []
    settings: Counter[str] = Counter()
    grounding: list[float] = []
    structured_n = 0
    for r in records:
        item: dict[str, Any] = {}
        if r.structured is not None:
            structured_n += 1
            kinds = schema_violations(r.structured)
            violations.update(kinds)
            item["violations"] = kinds
            s = r.structured if isinstance(r.structured, dict) else {}
            subs = s.get("subjects") if isinstance(s.get("subjects"), list) else []
            subjects.append(len(subs))
            attributes.extend(len(x.get("attributes") or []) for x in subs if isinstance(x, dict))
            acts = s.get("actions")
            actions.append(len(acts) if isinstance(acts, list) else 0)
            settings[str(s.get("setting", "unknown"))] += 1
        if r.status in ("repaired", "invalid"):
            reported.update(_note_kind(t) for t in (r.notes or []))
            if r.error:  # the parser joins several refusal reasons with "; "
                reported.update(_note_kind(e) for e in r.error.split("; ") if e.strip())
        if r.mode == "text":
            rate = _grounding_rate(r.grounding)
            if rate is not None:
                grounding.append(rate)
                item["grounding"] = rate
        kinds = degenerate_kinds(r)
        degenerate.update(kinds)
        item["degenerate"] = kinds
        if r.caption:
            words.append(len(WORD.findall(r.caption)))
            for e in encoders:
                c = e.count(r.caption)
                lengths[e.name].append(c)
                item[f"{e.name}_tokens"] = c
        per_item[r.id] = item
    stats: dict[str, Any] = {
        "records": n,
        "status_counts": {s: status.get(s, 0) for s in STATUSES},
        "status_rates": {s: (status.get(s, 0) / n if n else 0.0) for s in STATUSES},
        "parse_success_rate": (status.get("ok", 0) + status.get("repaired", 0)) / n if n else 0.0,
        "schema_violations": dict(violations.most_common()),
        "reported_problems": dict(reported.most_common()),
        "structured_records": structured_n,
        "degenerate_counts": {k: degenerate.get(k, 0) for k in ("empty", "repetition_loop", "truncated", "refusal")},
        "degenerate_rate": sum(1 for v in per_item.values() if v["degenerate"]) / n if n else 0.0,
        "words": _summary(words),
        "lengths": {},
    }
    for e in encoders:
        vals = lengths[e.name]
        over = sum(1 for v in vals if v > e.limit)
        stats["lengths"][e.name] = {
            **e.describe(),
            **_summary(vals),
            "over_limit": over,
            "over_limit_rate": over / len(vals) if vals else 0.0,
        }
    if structured_n:
        stats["fields"] = {
            "subjects_per_caption": _summary(subjects),
            "attributes_per_subject": _summary(attributes),
            "actions_per_caption": _summary(actions),
            "setting_shares": {k: settings.get(k, 0) / structured_n for k in sorted(set(SETTINGS) | set(settings))},
        }
    text_n = sum(1 for r in records if r.mode == "text")
    if text_n:
        stats["grounding"] = {
            "text_records": text_n,
            "with_grounding": len(grounding),
            "mean_rate": float(np.mean(grounding)) if grounding else None,
            "fully_grounded_share": (sum(1 for g in grounding if g >= 1.0) / len(grounding)) if grounding else None,
        }
    return stats, per_item
