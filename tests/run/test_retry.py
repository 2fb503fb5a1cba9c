"""Retryable versus final errors, the circuit breaker and --max-error-rate, through the real pipeline.

The engine is the scripted one (this tests the run's bookkeeping, not a model); test_server_outage.py kills a
real server under a real run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from make_inputs import jpeg  # noqa: E402
from run_scripted import ScriptedEngine, captioner, model_dir  # noqa: E402

from capmill.data.images import DecodeOptions  # noqa: E402
from capmill.data.sources import SourceOptions  # noqa: E402
from capmill.errors import EngineUnavailableError, ErrorRateError  # noqa: E402
from capmill.records import Generation  # noqa: E402
from capmill.run.local import CaptionJob, LocalRunner  # noqa: E402
from capmill.run.pipeline import PipelineOptions  # noqa: E402
from capmill.run.runfolder import read_records  # noqa: E402


@pytest.fixture(autouse=True)
def _reset():
    ScriptedEngine.reset()
    yield
    ScriptedEngine.reset()


def job(folder, run_dir, model, **kw):
    pipeline = {"batch_size": 2, "group_batches": 1, "workers": 0, "decode": DecodeOptions()}
    pipeline.update({k: kw.pop(k) for k in list(kw) if k in PipelineOptions.__dataclass_fields__})
    return CaptionJob(
        inputs=[str(folder)],
        make_captioner=lambda: captioner(model),
        run_dir=str(run_dir),
        shard_size=3,
        source=SourceOptions(),
        pipeline=PipelineOptions(**pipeline),
        progress=False,
        **kw,
    )


def inputs(tmp_path, n=10):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg((i * 12, 5, 5)))
    (folder / "zz-bad.jpg").write_bytes(b"not an image")
    return folder


def once(run_dir):
    records = list(read_records(str(run_dir)))
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), "an id appears twice"
    return {r.id: r for r in records}


def failing(monkeypatch, should_fail):
    """The scripted engine fails (retryably, as a server that is down) for the request ids `should_fail` picks."""
    real = ScriptedEngine._one

    def one(self, request):
        if should_fail(request.item_id):
            ScriptedEngine.calls.append(request.item_id)
            return Generation(text="", finish_reason="error", error="connection refused", retryable=True)
        return real(self, request)

    monkeypatch.setattr(ScriptedEngine, "_one", one)


def test_retryable_errors_are_redone_final_ones_are_not(tmp_path, monkeypatch):
    folder, model, run_dir = inputs(tmp_path), model_dir(tmp_path / "m"), tmp_path / "run"
    failing(monkeypatch, lambda item_id: item_id.endswith(("03.jpg", "07.jpg")))
    LocalRunner(job(folder, run_dir, model)).run()
    records = once(run_dir)
    assert records["in/03.jpg"].error_kind == "retryable" and records["in/zz-bad.jpg"].error_kind == "final"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["errors_by_kind"] == {"final": 1, "retryable": 2}
    monkeypatch.undo()
    ScriptedEngine.calls.clear()
    LocalRunner(job(folder, run_dir, model)).run()  # the same command: only the retryable ones again
    assert sorted(Path(c).name for c in ScriptedEngine.calls) == ["03.jpg", "07.jpg"]
    records = once(run_dir)
    assert len(records) == 11 and records["in/03.jpg"].status == "ok" and records["in/zz-bad.jpg"].status == "error"
    ScriptedEngine.calls.clear()
    LocalRunner(job(folder, run_dir, model, retry_errors=True)).run()  # --retry-errors: the bad input too
    assert ScriptedEngine.calls == []  # it fails in decoding again, before the model
    records = once(run_dir)
    assert len(records) == 11 and records["in/zz-bad.jpg"].error_kind == "final"


def test_circuit_breaker_stops_the_run_and_the_rerun_finishes(tmp_path, monkeypatch):
    folder, model, run_dir = inputs(tmp_path, 20), model_dir(tmp_path / "m"), tmp_path / "run"
    failing(monkeypatch, lambda item_id: Path(item_id).name >= "04.jpg")  # the server goes down after 4 inputs
    with pytest.raises(EngineUnavailableError, match="6 engine failures in a row") as caught:
        LocalRunner(job(folder, run_dir, model, max_consecutive_failures=5)).run()
    assert "run the same command again" in str(caught.value)
    assert len(ScriptedEngine.calls) == 10  # 5 batches of 2: it stopped, it did not go through all 20
    records = once(run_dir)
    assert sum(r.status == "ok" for r in records.values()) == 4
    assert all(r.error_kind == "retryable" for r in records.values() if r.status == "error" and "bad" not in r.id)
    monkeypatch.undo()
    ScriptedEngine.calls.clear()
    LocalRunner(job(folder, run_dir, model, max_consecutive_failures=5)).run()
    records = once(run_dir)
    assert len(records) == 21 and sum(r.status == "error" for r in records.values()) == 1  # only the bad input
    assert len(ScriptedEngine.calls) == 16


def test_max_error_rate_fails_a_finished_run_with_the_reason(tmp_path, monkeypatch):
    folder, model, run_dir = inputs(tmp_path, 4), model_dir(tmp_path / "m"), tmp_path / "run"
    with pytest.raises(ErrorRateError, match=r"error rate 0.200 \(1 of 5 records\)"):
        LocalRunner(job(folder, run_dir, model, max_error_rate=0.1)).run()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["session"]["completed"] and "max-error-rate 0.1" in summary["failed"]
    LocalRunner(job(folder, run_dir, model, max_error_rate=0.25)).run()  # within the limit: success


def test_a_copy_of_a_retried_original_waits_for_its_new_record(tmp_path, monkeypatch):
    folder, model, run_dir = inputs(tmp_path, 2), model_dir(tmp_path / "m"), tmp_path / "run"
    (folder / "01b.jpg").write_bytes((folder / "01.jpg").read_bytes())
    failing(monkeypatch, lambda item_id: item_id.endswith("01.jpg"))
    LocalRunner(job(folder, run_dir, model)).run()
    assert once(run_dir)["in/01b.jpg"].error_kind == "retryable"
    monkeypatch.undo()
    LocalRunner(job(folder, run_dir, model)).run()
    records = once(run_dir)
    assert records["in/01b.jpg"].status == "ok" and records["in/01b.jpg"].caption == records["in/01.jpg"].caption
    assert dataclasses.asdict(records["in/01.jpg"])["error_kind"] is None
