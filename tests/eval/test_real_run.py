"""`capmill eval` on what `capmill caption` really writes: a run folder from the tiny Qwen2-VL on the 12 photos."""

from __future__ import annotations

import json

from capmill.cli.main import main

from .conftest import COCO_PHOTOS


def test_eval_reads_a_real_caption_run(tiny_model, tmp_path):
    run_dir = tmp_path / "tiny-run"
    assert main(["caption", str(COCO_PHOTOS), "--model", str(tiny_model("qwen2_vl")), "--profile", "inkscope-2b",
                 "--run-dir", str(run_dir), "--max-new-tokens", "6", "--batch-size", "4", "--workers", "1",
                 "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "report"
    assert main(["eval", str(run_dir), "--refs", str(COCO_PHOTOS / "images.jsonl"), "--metrics", "bleu,cider",
                 "--embedder", "all-MiniLM-L6-v2", "--out", str(out)]) == 0  # fmt: skip
    run = json.loads((out / "metrics.json").read_text())["runs"]["tiny-run"]
    # record ids are file paths; every one finds its COCO references through the file-name alias
    assert run["matching"] == {"records": 12, "with_references": 12, "without_references": 0, "without_caption": 0}
    assert run["run"]["profile"] == "inkscope-2b"
    # random weights: nonsense captions far from the references, cut off at the 6-token limit
    assert run["coco"]["CIDEr"] < 0.2 and run["embedding"]["pair_fgd"] > 1.0
    assert run["structure"]["degenerate_counts"]["truncated"] == 12
    assert run["structure"]["status_counts"]["ok"] == 12
