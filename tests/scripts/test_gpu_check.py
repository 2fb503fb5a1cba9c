"""scripts/gpu-check: its short CPU version runs end to end (so CI keeps the GPU check working), and its exit code
says fidelity failure (1) apart from a step that could not run (2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def test_cpu_version_runs_and_reports(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CAPMILL_GPU_CHECK_CACHE": str(tmp_path / "models"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert set(steps) == {"env", "fidelity", "throughput", "devices", "train"}
    assert not results["failures"] and not results["errors"]
    (row,) = steps["fidelity"]["rows"]
    assert row["family"] == "qwen2_vl" and row["default_equal"] == row["exact_equal"] == row["photos"] == 4
    assert row["distinct_captions"] > 1  # outputs depend on the photo: the comparison is not vacuous
    assert steps["throughput"]["rows"][0]["images_per_s"] > 0
    one, two = steps["devices"]["rows"]
    assert (one["devices"], two["devices"], two["equal"]) == ("cpu", "cpu,cpu", "4/4")
    assert steps["train"]["steps"] == 2 and all(loss == loss for loss in steps["train"]["losses"])
    report = (out / "report.md").read_text()
    assert "**all passed**" in report and "## fidelity" in report and "| qwen2_vl | float32 |" in report


@pytest.fixture
def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_loader("gpu_check", SourceFileLoader("gpu_check", str(SCRIPT)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("outcome", "code"), [("failure", 1), ("error", 2), ("fine", 0)])
def test_exit_code_tells_a_fidelity_failure_from_a_step_error(gpu_check, tmp_path, monkeypatch, outcome, code):
    def step(self):
        if outcome == "failure":
            self.failures.append("qwen2_vl float32 batch: 7/8 equal")
        if outcome == "error":
            raise RuntimeError("no model")
        return {}

    monkeypatch.setattr(gpu_check.Check, "step_env", step)
    monkeypatch.setattr(sys, "argv", ["gpu-check", str(tmp_path), "--cpu", "--only", "env"])
    assert gpu_check.main() == code
    report = (tmp_path / "report.md").read_text()
    assert {"failure": "FIDELITY FAILURE", "error": "STEP ERRORS", "fine": "all passed"}[outcome] in report
