"""Recipes on the Ray runner, on a real local Ray cluster: the same stage runs and records as the local runner."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from capmill.errors import ConfigError, UnknownNameError
from capmill.recipes import Recipe
from capmill.run.runfolder import read_records, read_shard

pytestmark = pytest.mark.ray


def _photos(tmp_path: Path, coco_photos: list[Path]) -> Path:
    """Three photos (640x428 landscape, 612x612 square, 480x640 portrait), a copy of the first (same tags: a copy),
    a copy with other tags (its own caption), and a zero-byte file (an error record)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in (coco_photos[0], coco_photos[2], coco_photos[3]):
        shutil.copy(photo, folder / photo.name)
    shutil.copy(coco_photos[0], folder / "same-tags.jpg")
    shutil.copy(coco_photos[0], folder / "other-tags.jpg")
    (folder / "broken.jpg").write_bytes(b"")
    return folder


def _metadata(tmp_path: Path, folder: Path, first: str) -> Path:
    tags = {p.name: f"tag{i}" for i, p in enumerate(sorted(folder.glob("*.jpg")))}
    tags["same-tags.jpg"] = tags[first]
    tags["other-tags.jpg"] = "something else"
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps({"file_name": k, "tags": v}) + "\n" for k, v in tags.items()))
    return path


def _recipe(tiny_model, metadata: Path, rewrite_twice: bool = False) -> dict:
    model = str(tiny_model("qwen2_vl"))
    stages = [
        {
            "name": "detailed",
            "model": model,
            "prompt": "Describe. Tags: {meta.tags}.",
            "decoding": {"max_new_tokens": 8},
        },
        {
            "name": "short",
            "model": model,
            "mode": "text",
            "prompt": "Shorten: {stages.detailed}",
            "decoding": {"max_new_tokens": 5},
        },
    ]
    if rewrite_twice:  # a text stage with a prompt set: two captions per input, ids "ID#STYLE"
        styles = {"terse": "Tersely: {stages.short}", "plain": "Plainly: {stages.short}"}
        stages.append(
            {
                "name": "shorter",
                "model": model,
                "mode": "text",
                "prompt_set": {"choose": "all", "styles": styles},
                "decoding": {"max_new_tokens": 3},
            }
        )
    return {"name": "ray-test", "metadata": str(metadata), "stages": stages}


def _rows(records) -> list[dict]:
    rows = []
    for record in records:
        row = record.to_dict()
        row.pop("timings")
        for stage in (row.get("stages") or {}).values():
            stage.pop("timings", None)
        # PIL names a BytesIO by its address in some messages; that part differs between any two runs
        row["error"] = re.sub(r" at 0x[0-9a-f]+", "", row["error"]) if row["error"] else None
        rows.append(row)
    return sorted(rows, key=lambda r: r["id"])


def _stage_rows(run_dir: str, name: str) -> list[dict]:
    folder = Path(run_dir) / "stages" / name / "records"
    return _rows(r for shard in sorted(folder.glob("part-*")) for r in read_shard(str(shard)))


def _captioned(summary: dict) -> dict[str, int]:
    return {name: s["session"]["captioned"] for name, s in summary["stages"].items()}


def test_side_by_side_is_local_only_and_runner_names_are_checked(tmp_path, tiny_model, coco_photos):
    folder = _photos(tmp_path, coco_photos)
    spec = {**_recipe(tiny_model, _metadata(tmp_path, folder, coco_photos[0].name)), "side_by_side": True}
    with pytest.raises(ConfigError, match="side by side.*side_by_side: false"):
        Recipe.from_dict(spec).run([str(folder)], str(tmp_path / "run"), runner="ray", progress=False)
    with pytest.raises(UnknownNameError, match="nope"):
        Recipe.from_dict(spec).run([str(folder)], str(tmp_path / "run"), runner="nope", progress=False)
    assert not (tmp_path / "run" / "stages").exists()  # refused before any stage folder or model


@pytest.mark.slow
def test_two_stage_recipe_on_ray_matches_local_and_resumes(tiny_model, coco_photos, tmp_path, monkeypatch, capsys):
    """Image caption -> text rewrite through the CLI: one local Ray cluster for both stages (gone when the command
    ends), the local runner's stage records, identities and joined records; a rerun does no work and starts no
    cluster; an added stage runs alone."""
    ray = pytest.importorskip("ray")
    joined = ray.is_initialized()  # another test module's cluster: the stages join it, and start none

    def started(n: int) -> list[None]:
        assert ray.is_initialized() == joined  # a cluster started for a recipe is gone when the recipe ends
        return [] if joined else [None] * n

    from capmill.cli.main import main

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    folder = _photos(tmp_path, coco_photos)
    metadata = _metadata(tmp_path, folder, coco_photos[0].name)
    local, remote = str(tmp_path / "local"), str(tmp_path / "ray")
    summary = Recipe.from_dict(_recipe(tiny_model, metadata)).run([str(folder)], local, progress=False)
    sessions = {name: s["session"] for name, s in summary["stages"].items()}
    assert (sessions["detailed"]["captioned"], sessions["detailed"]["duplicates_copied"]) == (4, 1)
    assert sessions["short"]["captioned"] + sessions["short"]["duplicates_copied"] == 5  # equal texts: once

    starts = []
    real_init = ray.init

    def init(*args, **kwargs):  # the real ray.init, counted
        starts.append(kwargs.get("address"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", init)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_recipe(tiny_model, metadata)))
    cli = ["caption", str(folder), "--recipe", str(recipe_file), "--runner", "ray", "--quiet", "--workers", "0"]
    # --actors reaches every stage's Ray runner: a thousand model actors leave no CPU for the read tasks
    assert main([*cli, "--run-dir", remote, "--actors", "1000"]) == 2
    assert "no room for the read tasks" in capsys.readouterr().err
    assert starts == started(1)  # the cluster is shut down after a failed stage too

    assert main([*cli, "--run-dir", remote, "--actors", "1"]) == 0
    assert starts == started(2)  # one new local cluster for both stages

    want, got = _rows(read_records(local)), _rows(read_records(remote))
    assert got == want  # field by field, every stage's output included (timings aside)
    assert len(got) == 6 and sum(r["status"] == "error" for r in got) == 1
    for name in ("detailed", "short"):
        assert _stage_rows(remote, name) == _stage_rows(local, name)
        identities = [json.loads((Path(d) / "stages" / name / "stage.json").read_text()) for d in (local, remote)]
        assert identities[0] == identities[1]
    by_name = {os.path.basename(r["id"]): r for r in _stage_rows(remote, "detailed")}
    first = coco_photos[0].name
    assert by_name["same-tags.jpg"]["meta"]["duplicate_of"] == by_name[first]["id"]  # one prompt, one caption
    assert "duplicate_of" not in by_name["other-tags.jpg"]["meta"]  # other tags: its own caption
    assert by_name["other-tags.jpg"]["content_hash"] != by_name[first]["content_hash"]
    with open(os.path.join(remote, "stages", "detailed", "summary.json"), encoding="utf-8") as f:
        session = json.load(f)["session"]
    assert session["runner"] == "ray" and (session["captioned"], session["duplicates_copied"]) == (4, 1)

    assert main([*cli, "--run-dir", remote]) == 0  # again: nothing to do
    with open(os.path.join(remote, "summary.json"), encoding="utf-8") as f:
        again = json.load(f)
    assert _captioned(again) == {"detailed": 0, "short": 0}
    assert again["stages"]["detailed"]["session"]["skipped_done"] == 6
    assert _rows(read_records(remote)) == got
    assert starts == started(2)  # nothing to do: no cluster started

    grown = Recipe.from_dict(_recipe(tiny_model, metadata, rewrite_twice=True))
    summary = grown.run([str(folder)], remote, runner="ray", progress=False)  # a stage added: only it runs
    sessions = {name: s["session"] for name, s in summary["stages"].items()}
    assert [sessions[n]["captioned"] for n in ("detailed", "short")] == [0, 0]
    assert sessions["shorter"]["inputs_seen"] == 10 and sessions["shorter"]["runner"] == "ray"  # 5 inputs x 2 styles
    assert starts == started(3)
    grown.run([str(folder)], local, progress=False)
    got = _rows(read_records(remote))
    assert got == _rows(read_records(local)) and _stage_rows(remote, "shorter") == _stage_rows(local, "shorter")
    for row in got:
        if not row["id"].endswith("broken.jpg"):
            assert set(row["stages"]) == {"detailed", "short", "shorter"} and set(row["captions"]) == {"terse", "plain"}
            assert row["caption"] == row["stages"]["shorter"]["caption"] == row["captions"]["terse"]


@pytest.mark.slow
def test_a_tagger_stage_feeds_a_caption_stage_on_ray_as_locally(tiny_model, coco_photos, tmp_path, monkeypatch):
    """A WD tagger stage (onnxruntime in the Ray actor) whose tags a captioning stage's prompt reads: the same tags
    and captions as the local runner."""
    from capmill.testing.tagger import build_tiny_tagger

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    tagger = build_tiny_tagger(tmp_path / "tagger")
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in (coco_photos[0], coco_photos[2], coco_photos[3]):  # landscape, square, portrait
        shutil.copy(photo, photos / photo.name)
    spec = {
        "side_by_side": False,
        "stages": [
            {"name": "tags", "tagger": {"model": str(tagger), "general_threshold": 0.05}},
            {
                "name": "caption",
                "model": str(tiny_model("qwen2_vl")),
                "prompt": "Tags: {stages.tags}. Describe this photo.",
                "decoding": {"max_new_tokens": 6},
            },
        ],
    }
    runs = {}
    for runner in ("local", "ray"):
        run_dir = tmp_path / f"run-{runner}"
        Recipe.from_dict(spec).run([str(photos)], str(run_dir), progress=False, runner=runner)
        runs[runner] = {
            r.id: (r.caption, r.tags["tags"], r.stages["tags"]["caption"]) for r in read_records(str(run_dir))
        }
        assert _stage_rows(str(run_dir), "caption")  # the caption stage ran on this runner
    assert len(runs["ray"]) == 3 and all(tags for _, tags, _ in runs["ray"].values())
    assert runs["ray"] == runs["local"]
