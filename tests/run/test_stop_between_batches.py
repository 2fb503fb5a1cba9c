"""A first Ctrl-C stops after the batch in progress, not after the whole engine call (a window of batches).

The run hands the transformers engine a window of up to eight batches per call; the signal arrives during the
first batch. That batch's captions are kept, the engine runs no other batch of the call, and the next run
captions the rest: every photo once, with the captions of a run never interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from capmill.cli.main import main
from capmill.engines import stop_point
from capmill.engines.transformers_engine import TransformersEngine
from capmill.run.runfolder import read_records


@pytest.fixture
def photos(tmp_path, coco_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in coco_photos[:6]:  # landscape, portrait and square photos of several sizes
        shutil.copy(photo, folder / photo.name)
    return folder


def _captions(run_dir) -> dict[str, str]:
    records = list(read_records(str(run_dir)))
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r.id: r.caption for r in records}


@pytest.mark.parametrize("gate", [False, True])
def test_first_signal_keeps_the_batch_in_progress_and_leaves_the_rest(
    tmp_path, tiny_model, photos, monkeypatch, capsys, gate
):
    model = str(tiny_model("qwen2_vl"))
    args = ["caption", str(photos), "--model", model, "--profile", "inkscope-2b", "--batch-size", "1"]
    args += ["--max-new-tokens", "6", "-q", *(["--gate"] if gate else [])]
    assert main([*args, "--run-dir", str(tmp_path / "whole")]) == 0
    whole = _captions(tmp_path / "whole")
    assert len(whole) == 6

    original = TransformersEngine._generate_batch
    calls: list[str] = []

    def interrupted_in_the_first_batch(self, batch, singles):
        calls.extend(request.item_id for request in batch)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while this batch is in progress
        return original(self, batch, singles)

    monkeypatch.setattr(TransformersEngine, "_generate_batch", interrupted_in_the_first_batch)
    run_dir = tmp_path / "run"
    assert main([*args, "--run-dir", str(run_dir)]) == 130
    err = capsys.readouterr().err
    assert "stopping after the batch in progress" in err and "1 record(s) saved this session" in err
    # the engine ran no other batch of the call (with the gate, the item in progress may take its retries)
    assert len(calls) >= 1 and set(calls) == {calls[0]}, f"the engine went on to other inputs: {calls}"
    kept = _captions(run_dir)
    assert len(kept) == 1 and kept.items() <= whole.items()
    assert not stop_point.asked()  # the stop held for that call only

    monkeypatch.setattr(TransformersEngine, "_generate_batch", original)
    assert main([*args, "--run-dir", str(run_dir)]) == 0
    assert _captions(run_dir) == whole
