"""`capmill eval --clip-model`: the reference-free CLIPScore of each caption against its own photo."""

from __future__ import annotations

import json

import pytest

from capmill.cli.main import main


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from capmill.testing.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_eval_scores_captions_against_their_photos_without_references(tmp_path, two_runs, tiny_clip):
    from capmill.quality.clip_score import ClipScorer
    from capmill.records import Record

    human, _ = two_runs
    out = tmp_path / "r"
    assert main(["eval", str(human), "--clip-model", str(tiny_clip), "--out", str(out), "--worst", "3"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    run = data["runs"]["human"]
    scored = [i for i in run["items"] if "clip_score" in i]
    records = [Record.from_dict(json.loads(line)) for line in human.read_text().splitlines()]
    with_photo = [r for r in records if r.caption and r.source.endswith(".jpg") and "/" in r.source]
    assert len(scored) == len(with_photo) == run["image_text"]["n"] > 3
    # the same numbers as scoring the photos directly
    from PIL import Image

    by_id = {r.id: r for r in with_photo}
    direct = ClipScorer(str(tiny_clip)).score(
        [Image.open(by_id[i["id"]].source) for i in scored], [by_id[i["id"]].caption for i in scored]
    )
    assert [i["clip_score"] for i in scored] == pytest.approx([s.clip_score for s in direct], abs=1e-5)
    assert run["image_text"]["clip_score"] == pytest.approx(sum(i["clip_score"] for i in scored) / len(scored))
    missing = len([r for r in records if r.caption]) - len(with_photo)
    if missing:
        assert any(f"{missing} captioned records have no readable local image" in n for n in data["notes"])
    assert "CLIPScore" in (out / "index.html").read_text()
    assert "lowest CLIPScore" in (out / "worst.html").read_text()
