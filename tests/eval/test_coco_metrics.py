"""capmill's COCO metrics equal a direct pycocoevalcap run (pycocotools COCO + loadRes + the scorers) on real
COCO captions: corpus and per-image values, exactly."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from capmill.errors import ConfigError
from capmill.eval.coco_metrics import _shared_meteor, coco_scores, parse_metrics, spice_available
from capmill.eval.refs import load_references


def _direct(ref_path, candidates: dict[int, str], meteor) -> tuple[dict, dict]:
    """What COCOEvalCap.evaluate computes, minus SPICE (whose jars cannot be downloaded here)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ref_path))
        res = coco.loadRes([{"image_id": i, "caption": c} for i, c in candidates.items()])
        ids = coco.getImgIds()
        tok = PTBTokenizer()
        gts = tok.tokenize({i: coco.imgToAnns[i] for i in ids})
        hyp = tok.tokenize({i: res.imgToAnns[i] for i in ids})
        corpus, per = {}, {str(i): {} for i in ids}
        for scorer, names in [
            (Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
            (meteor, ["METEOR"]),
            (Rouge(), ["ROUGE_L"]),
            (Cider(), ["CIDEr"]),
        ]:
            score, scores = scorer.compute_score(gts, hyp)
            if len(names) == 1:
                score, scores = [score], [scores]
            for n, s, ss in zip(names, score, scores, strict=True):
                corpus[n] = float(s)
                for i, v in zip(gts.keys(), ss, strict=True):
                    per[str(i)][n] = float(v)
    return corpus, per


def test_equal_to_direct_pycocoevalcap(loo):
    refs = load_references(loo["refs"])
    cands = loo["candidates"]
    ours = coco_scores({str(i): refs.captions[str(i)] for i in cands}, {str(i): c for i, c in cands.items()})
    # METEOR's Java process is a stateless scorer that takes many seconds to warm up: the direct run uses the
    # same pycocoevalcap Meteor() process (started by capmill's helper, closed at exit) instead of a second one.
    corpus, per = _direct(loo["refs"], cands, _shared_meteor())
    assert set(corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert ours.corpus == corpus  # exact, not approximate
    assert ours.per_item == per
    # a human caption against four other humans scores like COCO's human baseline, far from zero
    assert 0.5 < corpus["CIDEr"] < 1.5 and corpus["Bleu_1"] > 0.5
    if not spice_available():
        assert any("SPICE skipped" in n for n in ours.notes)


def test_failed_item_scores_zero_and_subset_of_metrics(loo):
    refs = load_references(loo["refs"])
    keys = [str(i) for i in list(loo["candidates"])[:3]]
    hyp = {k: loo["candidates"][int(k)] for k in keys}
    hyp[keys[0]] = ""  # a failed item is scored as an empty caption
    out = coco_scores({k: refs.captions[k] for k in keys}, hyp, ["cider", "bleu"])
    assert set(out.corpus) == {"CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"}
    assert out.per_item[keys[0]]["CIDEr"] == 0.0 and out.per_item[keys[1]]["CIDEr"] > 0.0


def test_metric_names_are_checked():
    assert parse_metrics(["all"]) == ["bleu", "meteor", "rouge", "cider", "spice"]
    assert parse_metrics(["ROUGE_L", "CIDEr"]) == ["rouge", "cider"]
    with pytest.raises(ConfigError, match="unknown COCO metric 'blue'"):
        parse_metrics(["blue"])


def test_subset_file_is_real_coco(loo):
    data = json.loads(loo["refs"].read_text())
    assert len(data["images"]) == 20 and len(data["annotations"]) == 80  # four references left per image


def test_missing_java_is_a_clear_config_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="need Java"):
        coco_scores({"1": ["a cat"]}, {"1": "a cat"}, ["bleu"])
