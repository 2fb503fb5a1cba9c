"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) computed exactly as pycocoevalcap's COCOEvalCap.

Same tokenizer (PTB, Java), same scorers, same call order, so corpus and per-item values equal a direct
pycocoevalcap run on the same data. METEOR's Java process takes seconds to start, so one is kept per process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError, MissingDependencyError

METRICS = ("bleu", "meteor", "rouge", "cider", "spice")
NAMES = {
    "bleu": ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"],
    "meteor": ["METEOR"],
    "rouge": ["ROUGE_L"],
    "cider": ["CIDEr"],
    "spice": ["SPICE"],
}

_meteor: Any = None
_meteor_lock = threading.Lock()


def _pycocoevalcap_dir() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")  # a namespace package: no __file__
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("pycocoevalcap", "eval", "COCO caption metrics")
    return Path(list(spec.submodule_search_locations)[0])


def check_java() -> None:
    """pycocoevalcap's tokenizer and METEOR run in Java: say so before any work when it is missing."""
    if shutil.which("java") is None:
        raise ConfigError(
            "COCO metrics need Java (pycocoevalcap's PTB tokenizer and METEOR are Java programs) and no `java` is "
            "on PATH: install a Java runtime (e.g. apt-get install default-jre-headless) or pass --metrics none"
        )


def spice_available() -> bool:
    """SPICE needs Stanford CoreNLP jars that pycocoevalcap would download; without them it is skipped."""
    lib = _pycocoevalcap_dir() / "spice" / "lib"
    return (lib / "stanford-corenlp-3.6.0.jar").exists() and (lib / "stanford-corenlp-3.6.0-models.jar").exists()


def _shared_meteor() -> Any:
    global _meteor
    with _meteor_lock:
        if _meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor = Meteor()
            atexit.register(close_meteor)
        return _meteor


def close_meteor() -> None:
    """Stop the shared METEOR Java process (it is restarted on next use)."""
    global _meteor
    with _meteor_lock:
        m, _meteor = _meteor, None
    if m is not None:
        with contextlib.suppress(Exception):
            m.meteor_p.stdin.close()
            m.meteor_p.kill()
            m.meteor_p.wait()


@dataclass
class CocoScores:
    """Corpus scores by COCO name (Bleu_4, CIDEr ...), per-item scores by key, and notes (e.g. SPICE skipped)."""

    corpus: dict[str, float] = field(default_factory=dict)
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_metrics(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """Normalise a metric list ("bleu", "cider", "all"); unknown names are a config error."""
    if not names or "all" in names:
        return list(METRICS)
    out = []
    for n in names:
        key = n.lower().replace("-", "_")
        key = {"rouge_l": "rouge", "bleu_4": "bleu"}.get(key, key)
        if key not in METRICS:
            raise ConfigError(f"unknown COCO metric {n!r}; choose from {', '.join(METRICS)}")
        if key not in out:
            out.append(key)
    return out


def coco_scores(gts: dict[str, list[str]], res: dict[str, str], metrics: list[str] | None = None) -> CocoScores:
    """Score captions `res` against references `gts` (same keys), as COCOEvalCap.evaluate does."""
    _pycocoevalcap_dir()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    metrics = parse_metrics(metrics)
    check_java()
    out = CocoScores()
    if set(gts) != set(res):
        raise ValueError("captions and references must have the same keys")
    if not gts:
        out.notes.append("no captions with references: nothing to score")
        return out
    tokenizer = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):  # the tokenizer and BLEU print progress
        g = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
        r = tokenizer.tokenize({k: [{"caption": res[k]}] for k in gts})
    keys = list(g.keys())
    out.per_item = {k: {} for k in keys}
    for metric in metrics:
        if metric == "spice" and not spice_available():
            out.notes.append("SPICE skipped: Stanford CoreNLP jars are not in pycocoevalcap/spice/lib")
            continue
        if metric == "bleu":
            with contextlib.redirect_stdout(io.StringIO()):
                score, scores = Bleu(4).compute_score(g, r, verbose=0)
        elif metric == "meteor":
            meteor = _shared_meteor()
            score, scores = meteor.compute_score(g, r)
        elif metric == "rouge":
            score, scores = Rouge().compute_score(g, r)
        elif metric == "cider":
            score, scores = Cider().compute_score(g, r)
        else:
            from pycocoevalcap.spice.spice import Spice

            score, scores = Spice().compute_score(g, r)
            scores = [s["All"]["f"] for s in scores]
        names = NAMES[metric]
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, sc, per in zip(names, score, scores, strict=True):
            out.corpus[name] = float(sc)
            for k, v in zip(keys, per, strict=True):
                out.per_item[k][name] = float(v)
    return out
