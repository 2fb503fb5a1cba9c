"""A recipe killed at random moments (SIGKILL) and run again finishes exactly once, stage by stage."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def test_killed_recipe_resumes_exactly_once(tmp_path, tiny_model, coco_photos):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in coco_photos:
        shutil.copy(p, photos / p.name)
    model = str(tiny_model("qwen2_vl"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "side_by_side": False,  # one stage at a time: kills land in each stage's run, not in loading
                "stages": [
                    {
                        "name": "a",
                        "model": model,
                        "batch_size": 1,
                        "prompt": "Describe {stem}.",
                        "decoding": {"max_new_tokens": 6},
                    },
                    {
                        "name": "b",
                        "model": model,
                        "batch_size": 1,
                        "mode": "text",
                        "prompt": "Shorten: {stages.a}",
                        "decoding": {"max_new_tokens": 4},
                    },
                ],
            }
        )
    )
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "capmill",
        "caption",
        str(photos),
        "--recipe",
        str(recipe),
        "--run-dir",
        str(run_dir),
    ]
    command += ["--shard-size", "2", "-q"]
    rng = random.Random(0)
    for _ in range(4):  # killed at a random moment, four times
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(command, check=True, capture_output=True)
    ids = {}
    for stage in ("a", "b"):
        ids[stage] = []
        for shard in sorted((run_dir / "stages" / stage / "records").glob("part-*.jsonl")):
            ids[stage] += [json.loads(line) for line in shard.read_text().splitlines()]
        names = [r["id"] for r in ids[stage]]
        assert len(names) == len(set(names)), f"stage {stage}: a record written twice"
    assert len(ids["a"]) == 12
    assert len(ids["b"]) == sum(r["status"] == "ok" for r in ids["a"])  # every usable input, once
    from capmill.run.runfolder import read_records

    final = list(read_records(str(run_dir)))
    assert sorted(os.path.basename(r.id) for r in final) == sorted(os.listdir(photos))
    sessions = json.loads((run_dir / "stages" / "a" / "manifest.json").read_text())["sessions"]
    assert len(sessions) >= 2  # the first stage was resumed after a kill
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["records"] == 12
    assert not list(Path(run_dir / "stages").glob("*/records/.*.tmp"))
