"""Run folder: shards renamed whole, ledger after the rename, recovery after a crash, config conflicts."""

from __future__ import annotations

import json
import os

import pytest

from capmill.errors import RunConflictError
from capmill.run.runfolder import RunFolder, read_records
from record_samples import records

CONFIG = {"profile": "p", "model": "m", "engine": "e", "prompt_hash": "h", "decoding": {"max_new_tokens": 8}}


def open_run(path, **kw):
    return RunFolder(str(path), CONFIG, **kw)


def test_shards_commit_in_order_and_read_back(tmp_path):
    run = open_run(tmp_path, shard_size=2)
    for r in records(3):
        run.add(r)
    assert sorted(os.listdir(tmp_path / "records")) == [".part-00001.jsonl.tmp", "part-00000.jsonl"]
    assert run.ledger.count() == 2 and run.is_done(records(1)[0].id)
    run.close()
    run.release()
    assert [r.id for r in read_records(str(tmp_path))] == [r.id for r in records(3)]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["format"] == "jsonl" and manifest["capmill_version"]


def test_other_configuration_is_refused(tmp_path):
    open_run(tmp_path).release()
    with pytest.raises(RunConflictError, match="decoding"):
        RunFolder(str(tmp_path), {**CONFIG, "decoding": {"max_new_tokens": 9}})
    with pytest.raises(RunConflictError, match="format"):
        open_run(tmp_path, fmt="parquet")
    open_run(tmp_path).release()  # the same configuration resumes


def test_one_run_at_a_time(tmp_path):
    run = open_run(tmp_path)
    with pytest.raises(RunConflictError, match="another capmill run"):
        open_run(tmp_path)
    run.release()


def test_crash_between_rename_and_ledger_is_recovered(tmp_path):
    run = open_run(tmp_path, shard_size=10)
    for r in records(3):
        run.add(r)
    pending = run._pending
    pending.sink.close()
    os.replace(pending.tmp, tmp_path / "records" / pending.name)  # renamed, then "killed" before the ledger
    run._pending = None
    run.release()
    (tmp_path / "records" / ".part-00009.jsonl.tmp").write_text('{"half a rec')  # an unfinished shard
    again = open_run(tmp_path, shard_size=10)
    assert again.ledger.count() == 3 and again.ledger.shards() == {pending.name}
    assert not [n for n in os.listdir(tmp_path / "records") if n.endswith(".tmp")]
    assert again.find_record(again.key_for(records(1)[0].content_hash)).caption == "caption 0 ünïcode"
    assert again.ledger.errors_by_reason() == {"not an image": 1}
    again.release()


@pytest.mark.parametrize("fmt", ["parquet", "webdataset", "sidecar", "hf"])
def test_formats(tmp_path, fmt):
    run_dir = tmp_path / "run"
    rs = records(3)
    for r in rs:
        r.source = str(tmp_path / f"{r.content_hash[-1]}.jpg")
        open(r.source, "wb").close()
    run = open_run(run_dir, fmt=fmt, shard_size=2)
    for r in rs:
        run.add(r, b"\xff\xd8fake")
    run.close()
    run.release()
    assert [r.to_dict() for r in read_records(str(run_dir))] == [r.to_dict() for r in rs]
    if fmt == "sidecar":
        assert (tmp_path / "0.txt").read_text() == "caption 0 ünïcode\n" and not (tmp_path / "2.txt").exists()
    if fmt == "hf":
        datasets = pytest.importorskip("datasets")
        assert datasets.load_from_disk(str(run_dir / "dataset"))["id"] == [r.id for r in rs]
