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
    run = open_run(tmp_path)
    run.add(records(1)[0])
    run.close()
    run.release()
    with pytest.raises(RunConflictError, match="decoding") as caught:
        RunFolder(str(tmp_path), {**CONFIG, "decoding": {"max_new_tokens": 9}})
    message = str(caught.value)
    assert "holds 1 record(s)" in message and "decoding.max_new_tokens: 8 (in the folder) -> 9 (now)" in message
    assert f"rm -rf {tmp_path}" in message
    with pytest.raises(RunConflictError, match="format"):
        open_run(tmp_path, fmt="parquet")
    open_run(tmp_path).release()  # the same configuration resumes


def test_a_folder_without_records_takes_the_new_configuration(tmp_path):
    open_run(tmp_path).release()  # a start that failed before captioning anything
    run = RunFolder(str(tmp_path), {**CONFIG, "model": "other"})
    run.release()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["model"] == "other" and len(manifest["sessions"]) == 1


def test_library_version_change_is_reported_not_refused(tmp_path):
    RunFolder(str(tmp_path), CONFIG, versions={"torch": "1.0"}).release()
    run = RunFolder(str(tmp_path), CONFIG, versions={"torch": "2.0"})
    run.release()
    assert run.notices and "torch 1.0 -> 2.0" in run.notices[0]


def test_retryable_errors_are_redone_and_read_back_once(tmp_path):
    import dataclasses

    ok, bad, gone = records(3)
    bad = dataclasses.replace(bad, status="error", error="x: engine error", error_kind="retryable")
    gone = dataclasses.replace(gone, status="error", error="x: not an image", error_kind="final")
    run = open_run(tmp_path, shard_size=10)
    for r in (ok, bad, gone):
        run.add(r)
    run.close()
    assert run.is_done(ok.id) and not run.is_done(bad.id) and run.is_done(gone.id)
    run.release()
    retry_all = RunFolder(str(tmp_path), CONFIG, retry_errors=True)
    assert not retry_all.is_done(gone.id) and retry_all.is_done(ok.id)
    fixed = dataclasses.replace(bad, status="ok", error=None, error_kind=None, caption="now it works")
    retry_all.add(fixed)
    retry_all.close()
    retry_all.release()
    back = list(read_records(str(tmp_path)))
    assert [r.id for r in back] == [ok.id, gone.id, bad.id]  # each id once, the retried one's newest record
    assert back[-1].caption == "now it works"


def test_commits_on_a_time_bound(tmp_path):
    run = open_run(tmp_path, shard_size=1000, commit_seconds=0.2)
    first, second = records(2)
    run.add(first)
    assert run.ledger.count() == 0
    import time

    time.sleep(0.3)
    run.commit_if_due()  # what the writer calls while it waits
    assert run.ledger.count() == 1
    run.add(second)
    run.close()
    run.release()


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


def test_hf_dataset_holds_each_id_once_after_a_retry(tmp_path):
    import dataclasses

    datasets = pytest.importorskip("datasets")
    ok, bad = records(2)
    bad = dataclasses.replace(bad, status="error", error="x: engine error", error_kind="retryable")
    run = open_run(tmp_path, fmt="hf")
    run.add(ok)
    run.add(bad)
    run.close()
    run.release()
    again = open_run(tmp_path, fmt="hf")
    assert not again.is_done(bad.id)
    again.add(dataclasses.replace(bad, status="ok", error=None, error_kind=None, caption="fine now"))
    again.close()
    again.release()
    ds = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert sorted(ds["id"]) == sorted([ok.id, bad.id]) and "fine now" in ds["caption"]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "webdataset"])
def test_a_duplicates_original_is_read_at_its_position(tmp_path, fmt):
    from capmill.run.runfolder import read_shard_row

    run = open_run(tmp_path, fmt=fmt, shard_size=50)
    rows = records(7)
    for r in rows:
        run.add(r)
    run.close()
    shard = str(tmp_path / "records" / run.shard_names()[0])
    assert [read_shard_row(shard, i).id for i in range(7)] == [r.id for r in rows]
    entry = run.ledger.find_key(run.key_for(rows[5].content_hash))
    assert entry.pos == 5 and run.find_record(run.key_for(rows[5].content_hash)).id == rows[5].id
    run.release()
