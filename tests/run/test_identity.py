"""A portable, complete run identity on the real CLI and the real tiny Qwen2-VL: the same run from any directory
and however the input is spelled; a changed dtype, `--exact` or a different checkpoint at the same path refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from capmill.cli.main import main
from capmill.run.runfolder import read_records

COCO = Path(__file__).parents[1] / "data" / "coco"


@pytest.fixture
def setup(tmp_path, tiny_model, monkeypatch):
    """tmp/work/photos (3 photos), tmp/work/model (a copy of the tiny model), and a run folder; cwd: tmp/work."""
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    for photo in sorted(COCO.glob("*.jpg"))[:3]:
        shutil.copy(photo, work / "photos" / photo.name)
    shutil.copytree(tiny_model("qwen2_vl"), work / "model")
    monkeypatch.chdir(work)
    return work


def caption(inputs, model, run_dir, *extra):
    return main(["caption", inputs, "--model", model, "--profile", "inkscope-2b", "--run-dir", str(run_dir),
                 "--max-new-tokens", "4", "--batch-size", "2", "--quiet", *extra])  # fmt: skip


def session(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())["session"]


def test_resume_from_another_directory_and_with_an_absolute_path(setup, monkeypatch, capsys):
    run_dir = setup / "run"
    assert caption("photos", "model", run_dir) == 0
    assert session(run_dir)["captioned"] == 3
    ids = sorted(r.id for r in read_records(str(run_dir)))
    assert ids == sorted(f"photos/{p.name}" for p in (setup / "photos").iterdir())
    assert caption(str(setup / "photos"), str(setup / "model"), run_dir) == 0  # absolute paths
    assert session(run_dir)["skipped_done"] == 3 and session(run_dir)["captioned"] == 0
    monkeypatch.chdir(setup / "photos")  # another directory, relative paths from there
    assert caption("../photos/", "../model", "../run") == 0
    assert session(run_dir)["skipped_done"] == 3 and session(run_dir)["captioned"] == 0
    assert caption(".", "../model", "../run") == 0  # the folder itself, as "."
    assert session(run_dir)["skipped_done"] == 3
    assert sorted(r.id for r in read_records(str(run_dir))) == ids  # 3 records, never 6
    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = manifest["config"]
    assert config["model"] == str(setup / "model") and len(config["model_fingerprint"]) == 16
    assert {"torch", "transformers", "capmill"} <= set(manifest["sessions"][-1]["versions"])


def test_changed_dtype_exact_or_checkpoint_is_refused(setup, capsys):
    run_dir = setup / "run"
    assert caption("photos", "model", run_dir, "--dtype", "float32") == 0
    capsys.readouterr()
    assert caption("photos", "model", run_dir, "--dtype", "bfloat16") == 2
    err = capsys.readouterr().err
    assert "holds 3 record(s) made with a different configuration" in err
    assert 'engine_options.dtype: "float32" (in the folder) -> "bfloat16" (now)' in err
    assert f"rm -rf {run_dir}" in err
    assert caption("photos", "model", run_dir, "--dtype", "float32", "--exact") == 2
    assert "engine_options.batch_invariant" in capsys.readouterr().err
    assert caption("photos", "model", run_dir, "--dtype", "float32", "--device", "cpu") == 0  # device: no output change
    config = json.loads((setup / "model" / "config.json").read_text())
    config["capmill_test_marker"] = 1  # another checkpoint saved at the same path
    (setup / "model" / "config.json").write_text(json.dumps(config))
    assert caption("photos", "model", run_dir, "--dtype", "float32") == 2
    assert "model_fingerprint" in capsys.readouterr().err


def test_a_failed_start_does_not_bind_the_folder(setup, capsys):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("needs an environment without vLLM, where --engine vllm fails after the folder is opened")
    run_dir = setup / "run"
    assert caption("photos", "model", run_dir, "--engine", "vllm") == 2  # vLLM missing: fails at the model load
    err = capsys.readouterr().err
    assert "capmill[vllm]" in err or "setup-vllm-env.sh" in err  # the install route for this machine
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["engine"] == "vllm"
    assert caption("photos", "model", run_dir) == 0  # the corrected command is not refused
    assert session(run_dir)["captioned"] == 3
