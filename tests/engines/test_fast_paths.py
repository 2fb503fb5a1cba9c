"""The fast-path guard: a fast path that no longer computes what the plain path computes steps aside, and says why.

Each test breaks one fast path on purpose, the way a library release broke it (the merged cache reporting row 0's
length, as transformers 5.25 made it; a stored prefix state that is off; attention that is not row-wise under
--exact), and checks that the guard switches it off on the first batch, warns once, reports it, and that every
photo still gets the card's caption.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from capmill.engines import exact_attention, prefix_cache, row_merge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import test_fidelity_json_captioner as card  # noqa: E402 - the card's snippet, written once in tests/models
from fidelity_support import shaped_photos  # noqa: E402
from test_prefix_cache import _captioner  # noqa: E402 - json-captioner with the stand-in scaffold, batch 8


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos, tmp_path_factory):
    path = str(tiny_model("qwen3_5"))
    loaded = card.card_load(path)
    photos = shaped_photos(coco_photos, tmp_path_factory.mktemp("shapes"), seed=3, n=6)
    refs = [card.card_caption(*loaded, image_path=str(p))[1] for p in photos]
    return path, photos, refs


def test_healthy_fast_paths_are_verified_and_reported(setup):
    path, photos, refs = setup
    with _captioner(path) as cap:
        assert cap.fast_paths() == {}  # nothing is loaded, nothing is claimed
        assert [r.raw for r in cap.caption(photos)] == refs
        state = cap.fast_paths()
    assert state["merge_rows"]["state"] == "verified"
    assert state["merge_rows"]["probe_rows"] == 2 and state["merge_rows"]["probe_tokens"] == 4
    assert state["merge_rows"]["max_logit_diff"] < 1e-3
    assert state["batch_invariant"]["state"] == "off"
    json.dumps(state)  # goes into summary.json as it is


def test_a_merge_that_reports_the_wrong_length_is_switched_off(setup, monkeypatch, caplog):
    """transformers 5.25's failure, replayed: the merged cache says it holds row 0's length."""
    path, photos, refs = setup
    real_merge = row_merge.merge_rows

    def merge_with_row0_length(caches, lengths):
        merged = real_merge(caches, lengths)
        for layer in merged.layers:
            if hasattr(layer, "cumulative_length_linear"):
                layer.cumulative_length_linear.fill_(min(lengths))
        return merged

    monkeypatch.setattr(row_merge, "merge_rows", merge_with_row0_length)
    with _captioner(path) as cap, caplog.at_level(logging.WARNING, logger="capmill.engines.fast_paths"):
        records = cap.caption(photos)
        state = cap.fast_paths()
        more = cap.caption(photos[:3])
    assert [r.raw for r in records] == refs  # every photo its own caption, from the plain path
    assert [r.raw for r in more] == refs[:3]
    assert state["merge_rows"]["state"] == "disabled"
    assert "differ" in state["merge_rows"]["reason"]
    warnings = [r for r in caplog.records if "merge_rows switched off" in r.getMessage()]
    assert len(warnings) == 1  # one clear warning, not one per batch


def test_a_stored_prefix_that_is_off_is_switched_off(setup, monkeypatch):
    path, photos, refs = setup
    real_cache_for = prefix_cache.PrefixStore.cache_for

    def skewed(self, model, prefix_ids, batch):
        cache = real_cache_for(self, model, prefix_ids, batch)
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None:
                layer.keys.mul_(1.5)
        return cache

    monkeypatch.setattr(prefix_cache.PrefixStore, "cache_for", skewed)
    same_size = [photos[0], photos[0], photos[0]]  # one length: an unpadded batch that takes the stored prefix
    with _captioner(path, merge_rows=False) as cap:
        assert [r.raw for r in cap.caption(same_size)] == [refs[0]] * 3
        assert cap.fast_paths()["prefix_cache"]["state"] == "disabled"
        assert [r.raw for r in cap.caption(photos)] == refs


def test_exact_that_is_not_row_wise_falls_back_to_rows_alone(setup, monkeypatch):
    path, photos, refs = setup
    monkeypatch.setattr(exact_attention, "install", lambda model: False)  # batched SDPA rounds per batch size
    with _captioner(path, batch_invariant=True, prefix_cache=False) as cap:
        records = cap.caption(photos)
        state = cap.fast_paths()["batch_invariant"]
    assert [r.raw for r in records] == refs
    if state["state"] == "disabled":  # the usual case: batched attention rounds differently from one row
        assert "rows alone" in state["reason"] and {r.timings["batch_size"] for r in records} == {1}
    else:  # this CPU's kernels happened to agree to the bit: then the batch really is exact
        assert state["state"] == "verified" and state["max_logit_diff"] == 0.0


def test_summary_json_says_which_paths_served(setup, tmp_path):
    from capmill.run.local import CaptionJob, LocalRunner

    path, photos, _ = setup
    job = CaptionJob(
        inputs=[str(p) for p in photos],
        run_dir=str(tmp_path / "run"),
        make_captioner=lambda: _captioner(path),
        progress=False,
    )
    summary = LocalRunner(job).run()
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["session"]["fast_paths"]["merge_rows"]["state"] == "verified"
    assert summary["session"]["fast_paths"] == written["session"]["fast_paths"]
