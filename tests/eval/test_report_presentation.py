"""How the report shows its numbers: bounded axes, a small-sample warning for the set distance, wrapped captions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from capmill.eval.frechet import embedding_distances
from capmill.eval.report_plots import reference_metric_figures

CHROMIUM = "/usr/bin/chromium"


def _bar_heights(ax) -> list[float]:  # noqa: ANN001
    return [patch.get_height() for patch in ax.patches]


def test_a_tiny_score_is_drawn_small_not_filling_the_plot():
    runs = {"a": {"coco": {"Bleu_4": 0.0009, "METEOR": 0.0012, "CIDEr": 0.004}}}
    scores, cider = reference_metric_figures(runs)
    ax = scores.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert max(_bar_heights(ax)) / ax.get_ylim()[1] < 0.01
    assert [t.get_text() for t in ax.texts] == ["0.0009", "0.0012"]  # the value is still readable on the bar
    assert cider.axes[0].get_ylim()[1] >= 1.0


def test_large_values_still_fit():
    runs = {"a": {"coco": {"CIDEr": 2.93}}, "b": {"coco": {"CIDEr": 0.5}}}
    (cider,) = reference_metric_figures(runs)
    ax = cider.axes[0]
    assert ax.get_ylim()[1] >= 2.93 and max(_bar_heights(ax)) / ax.get_ylim()[1] > 0.8


@pytest.mark.parametrize(("n", "dim", "warned"), [(40, 384, True), (500, 384, False), (383, 384, True)])
def test_set_frechet_warns_when_items_are_fewer_than_dimensions(n, dim, warned):
    rng = np.random.default_rng(0)
    caps = rng.normal(size=(n, dim))
    refs = [rng.normal(size=(2, dim)) for _ in range(n)]
    dist = embedding_distances([str(i) for i in range(n)], caps, refs)
    assert dist.set_frechet_underdetermined is warned
    assert dist.as_dict()["set_frechet_underdetermined"] is warned
    if warned:
        assert f"rests on {n} items in {dim} embedding dimensions" in dist.warning()
    else:
        assert dist.warning() is None


def test_report_notes_the_small_sample_set_distance(two_runs, loo, tmp_path):
    from capmill.cli.main import main

    human, _ = two_runs
    out = tmp_path / "r"
    assert main(["eval", str(human), "--refs", str(loo["refs"]), "--metrics", "bleu", "--out", str(out)]) == 0
    import json

    data = json.loads((out / "metrics.json").read_text())
    assert data["runs"]["human"]["embedding"]["set_frechet_underdetermined"] is True
    assert any("run human: set Frechet rests on 19 items in 384" in note for note in data["notes"])
    assert "set Frechet rests on 19 items" in (out / "index.html").read_text()
    assert "seed" not in (out / "index.html").read_text().lower()


def _report_with_a_long_caption(tmp_path):
    long_caption = "x" * 3000  # one 3000-character word: a loop of a tokenizer without spaces
    item = {"id": "0001", "source": "", "status": "ok", "caption": long_caption, "error": None, "degenerate": []}
    run = {
        "run": {"path": "r.jsonl", "records": 1, "model": "m"},
        "structure": {"status_rates": {"ok": 1.0, "repaired": 0.0, "invalid": 0.0, "error": 0.0}, "lengths": {}},
        "items": [item],
        "problems": [],
    }
    data = {"capmill_version": "0", "created": "now", "references": None, "embedder": None, "notes": [], "runs": {}}
    data["runs"]["r"] = run
    return data


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: apt-get install -y chromium")
def test_a_caption_without_spaces_wraps_on_the_weakest_items_page(tmp_path):
    from playwright.sync_api import sync_playwright

    from capmill.eval.report import _worst_page

    page_html = _worst_page(_report_with_a_long_caption(tmp_path), 5)
    (tmp_path / "worst.html").write_text(page_html)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto((tmp_path / "worst.html").as_uri())
            scroll, client = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            box = page.locator(".item").first.bounding_box()
        finally:
            browser.close()
    assert scroll <= client  # no horizontal overflow: the 3000 characters wrapped
    assert box["height"] > 100  # onto many lines


def test_the_weakest_items_page_carries_the_wrapping_rule(tmp_path):
    from capmill.eval.report import _worst_page

    page_html = _worst_page(_report_with_a_long_caption(tmp_path), 5)
    assert "overflow-wrap:anywhere" in page_html and "x" * 3000 in page_html
