"""`capmill eval` end to end on COCO captions: two runs side by side, metrics.json, index.html, worst.html."""

from __future__ import annotations

import json
import re

import pytest

from capmill.cli.main import main
from capmill.eval.coco_metrics import coco_scores
from capmill.eval.refs import load_references


@pytest.fixture(scope="module")
def report(two_runs, loo, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    human, mism = two_runs
    rc = main(
        [
            "eval",
            str(human),
            str(mism),
            "--refs",
            str(loo["refs"]),
            "--embedder",
            "all-MiniLM-L6-v2",
            "--out",
            str(out),
            "--worst",
            "5",
        ]
    )
    assert rc == 0
    return out


def test_metrics_json_holds_every_number(report, loo):
    data = json.loads((report / "metrics.json").read_text())
    human, mism = data["runs"]["human"], data["runs"]["mismatched"]
    refs = load_references(loo["refs"])
    # the corpus scores are pycocoevalcap's on the same data (the failed item scored as an empty caption)
    cands = {str(i): c for i, c in loo["candidates"].items()}
    cands[list(cands)[-1]] = ""
    direct = coco_scores({k: refs.captions[k] for k in cands}, cands, ["bleu", "rouge", "cider"])
    for k in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert human["coco"][k] == direct.corpus[k]
    assert "METEOR" in human["coco"] and any("SPICE" in n for n in data["notes"])
    # a human caption beats a caption of another image on every reference metric and on both distances
    for k in ("Bleu_1", "METEOR", "ROUGE_L", "CIDEr"):
        assert human["coco"][k] > mism["coco"][k]
    assert human["embedding"]["pair_fgd"] < mism["embedding"]["pair_fgd"]
    assert human["embedding"]["excluded_without_caption"] == 1
    assert human["matching"] == {"records": 20, "with_references": 20, "without_references": 0, "without_caption": 1}
    assert mism["structure"]["degenerate_counts"] == {"empty": 0, "repetition_loop": 1, "truncated": 1, "refusal": 1}
    assert human["structure"]["status_counts"]["error"] == 1
    item = human["items"][0]
    assert {"CIDEr", "Bleu_4", "METEOR", "pair_sq_dist", "clip_tokens", "t5_tokens", "references"} <= set(item)
    assert data["embedder"]["model"] == "all-MiniLM-L6-v2" and data["embedder"]["dim"] == 384


def test_html_report_has_tables_plots_and_worst_page(report):
    index = (report / "index.html").read_text()
    assert index.count("data:image/png;base64,") >= 4
    assert "<table>" in index and "Side by side" in index and "per-pair FGD" in index.replace("Per-pair", "per-pair")
    assert re.search(r"<td class=\"num best\">", index)  # the better run is marked per row
    worst = (report / "worst.html").read_text()
    assert worst.count("class='item'") == 10  # five per run
    assert "data:image/jpeg;base64," in worst  # thumbnails of the credited COCO photos
    assert "lowest CIDEr" in worst


def test_cli_config_errors(tmp_path, capsys, two_runs):
    human, _ = two_runs
    assert main(["eval", str(human), "--refs", str(tmp_path / "missing.json")]) == 2
    assert "references" in capsys.readouterr().err
    assert main(["eval", str(human), "--metrics", "blue", "--out", str(tmp_path)]) == 2
    assert "unknown COCO metric 'blue'" in capsys.readouterr().err
    assert main(["eval", str(human), "--qa", "x.jsonl", "--out", str(tmp_path)]) == 2
    assert "--qa needs --answerer" in capsys.readouterr().err


def test_structure_only_without_references(tmp_path, two_runs):
    human, _ = two_runs
    assert main(["eval", str(human), "--out", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    run = data["runs"]["human"]
    assert "coco" not in run and "embedding" not in run and run["structure"]["records"] == 20
    assert "Weakest" in (tmp_path / "r" / "worst.html").read_text()


def test_report_of_structured_and_text_mode_runs(tmp_path):
    from capmill.eval.lengths import length_encoders
    from capmill.eval.report import write_report
    from capmill.eval.results import Run
    from capmill.eval.suite import EvalConfig, evaluate_runs

    from .conftest import make_record

    good = {"subjects": [{"name": "man", "attributes": ["young"]}], "actions": ["man rides skateboard"],
            "setting": "outdoor"}  # fmt: skip
    bad = {"subjects": [{"name": "x" * 70}], "actions": [], "setting": "moon", "mood": "happy"}
    recs = [
        make_record(349860, "young man rides skateboard", structured=good, mode="text", grounding={"rate": 1.0}),
        make_record(
            397133,
            "x",
            status="repaired",
            structured=bad,
            mode="text",
            grounding={"rate": 0.5},
            notes=["setting 'Moon' read as 'moon'"],
        ),  # fmt: skip
        make_record(475678, None, status="invalid", mode="text", error="subjects must be a list, got str 'a'"),
    ]
    data = evaluate_runs([Run("structured", "mem", recs)], None, EvalConfig(encoders=length_encoders()))
    st = data["runs"]["structured"]["structure"]
    assert st["schema_violations"] == {"bad_setting": 1, "mood_not_null": 1, "subject_name_length": 1}
    assert st["reported_problems"] == {"setting read as": 1, "subjects must be a list, got str": 1}
    assert st["grounding"]["mean_rate"] == 0.75
    index = write_report(data, tmp_path / "r")
    html = index.read_text()
    for title in ("Schema violations", "Problems reported by the parser", "Structured fields", "Grounding (text mode)"):
        assert title in html
    assert "outdoor 50%" in html and "moon 50%" in html


def test_eval_runs_offline_with_its_defaults(tmp_path, two_runs, loo):
    """With the hub switched off the default embedder is replaced by the bundled one, said in a note, and the
    whole report is written (a subprocess, since the hub's offline switch is read at import)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import capmill

    human, _ = two_runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(capmill.__file__).parents[1])}
    out = tmp_path / "offline"
    cmd = [sys.executable, "-m", "capmill", "eval", str(human), "--refs", str(loo["refs"]), "--metrics", "bleu"]
    proc = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "metrics.json").read_text())
    assert data["embedder"]["model"] == "all-MiniLM-L6-v2"
    assert data["runs"]["human"]["embedding"]["pair_fgd"] >= 0
    note = next(n for n in data["notes"] if "thenlper/gte-small" in n)
    assert "unreachable" in note and "bundled all-MiniLM-L6-v2" in note
    assert "thenlper/gte-small" in (out / "index.html").read_text()
    assert "note: embedder 'thenlper/gte-small'" in proc.stdout


def test_an_unloadable_embedder_is_skipped_when_nothing_can_stand_in(monkeypatch):
    from pathlib import Path

    from capmill.eval import embeddings

    monkeypatch.setattr(embeddings, "hub_reachable", lambda timeout=3.0: False)
    embedder, notes = embeddings.load_embedder("all-MiniLM-L6-v2-not-bundled/nowhere")
    assert embedder is not None and embedder.name == "all-MiniLM-L6-v2"
    assert "not in the local cache" in notes[0]
    monkeypatch.setattr(embeddings, "bundled_minilm_path", lambda: Path("/nonexistent/all-MiniLM-L6-v2"))
    embedder, notes = embeddings.load_embedder("all-MiniLM-L6-v2")
    assert embedder is None and notes[0].endswith("embedding distances skipped")
