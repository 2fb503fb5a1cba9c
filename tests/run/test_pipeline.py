"""The pipeline end to end on real files with the real Captioner (prepare, parse) and a scripted engine.

Covers issue 4: every bad input is a record with a reason and the run goes on; duplicates are captioned once and
every copy gets its record; a rerun resumes without redoing anything; a crashed engine loses nothing.
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from local_http import serve  # noqa: E402
from make_inputs import BAD, COCO, GOOD, jpeg, make_inputs  # noqa: E402
from run_scripted import SCAFFOLD, ScriptedEngine, captioner, model_dir  # noqa: E402

from capmill.data.fetch import FetchOptions  # noqa: E402
from capmill.data.images import DecodeOptions  # noqa: E402
from capmill.data.sources import SourceOptions  # noqa: E402
from capmill.errors import EngineError, RunConflictError  # noqa: E402
from capmill.run.local import CaptionJob, LocalRunner  # noqa: E402
from capmill.run.pipeline import PipelineOptions  # noqa: E402
from capmill.run.runfolder import read_records  # noqa: E402

PHOTOS = sorted(COCO.glob("*.jpg"))[:3]


@pytest.fixture(autouse=True)
def _reset():
    ScriptedEngine.reset()
    yield
    ScriptedEngine.reset()


def job(inputs, run_dir, model, workers=0, shard_size=4, batch_size=3, mode=None, group_batches=8, **captioner_kwargs):
    return CaptionJob(
        inputs=[str(i) for i in inputs],
        make_captioner=lambda: captioner(model, mode=mode, **captioner_kwargs),
        run_dir=str(run_dir),
        shard_size=shard_size,
        source=SourceOptions(mode=mode or "caption"),
        pipeline=PipelineOptions(
            batch_size=batch_size,
            group_batches=group_batches,
            workers=workers,
            decode=DecodeOptions(max_pixels=10_000_000),
            fetch=FetchOptions(timeout=0.5, retries=0),
        ),
        progress=False,
    )


def by_id(run_dir):
    out = {}
    for record in read_records(str(run_dir)):
        assert record.id not in out, f"{record.id} written twice"
        out[record.id] = record
    return out


def small_jpegs(folder, n):
    """A folder of n distinct 9x9 JPEGs."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg((i * 4, 9, 9)))
    return folder


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_every_bad_input_is_a_record_and_the_run_goes_on(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = make_inputs(tmp_path / "in")
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(PHOTOS[0], folder / "copy_of_first.jpg")  # a duplicate: captioned once, two records
    pq.write_table(
        pa.Table.from_pylist([{"id": "row-ok", "image": jpeg()}, {"id": "row-null", "image": None}]),
        tmp_path / "t.parquet",
    )
    _tar(tmp_path / "s.tar", [("ok.jpg", jpeg((9, 9, 9))), ("notimg.jpg", b"plain text"), ("meta.cls", b"1")])
    with serve() as base:
        (tmp_path / "urls.txt").write_text(f"{base}/img/3.jpg\n{base}/missing.jpg\n{base}/slow.jpg\n")
        inputs = [folder, tmp_path / "t.parquet", tmp_path / "s.tar", tmp_path / "urls.txt"]
        summary = LocalRunner(job(inputs, tmp_path / "run", model_dir(tmp_path / "m"), workers=1)).run()
    records = by_id(tmp_path / "run")
    reasons = {Path(i).name.split("#")[-1]: r.error for i, r in records.items() if r.status == "error"}
    for name, reason in BAD.items():
        assert reason in reasons.pop(name), name
    assert reason_of(reasons.pop("row-null")) == "corrupt row"
    assert reason_of(reasons.pop("notimg")) == "not an image"
    assert reason_of(reasons.pop("meta")) == "not an image"  # a sample with no image member
    assert reason_of(reasons.pop("missing.jpg")) == "http 404"
    assert reason_of(reasons.pop("slow.jpg")) == "timeout"
    assert reasons == {}
    ok = {Path(i).name: r for i, r in records.items() if r.status == "ok"}
    assert set(ok) >= {*GOOD, *(p.name for p in PHOTOS), "copy_of_first.jpg", "row-ok", "3.jpg"}
    # the duplicate: the model saw it once, both inputs have the same caption
    assert ok["copy_of_first.jpg"].caption == ok[PHOTOS[0].name].caption
    assert ok["copy_of_first.jpg"].meta["duplicate_of"] == f"in/{PHOTOS[0].name}"  # ids: relative to the input
    seen = [Path(i).name for i in ScriptedEngine.calls]
    assert seen.count(PHOTOS[0].name) + seen.count("copy_of_first.jpg") == 1
    run = summary["run"]
    assert run["records"] == len(records) and run["by_status"]["error"] == sum(run["errors_by_reason"].values())
    assert run["errors_by_reason"]["corrupt row"] == 1 and run["errors_by_reason"]["timeout"] == 1
    assert summary["session"]["time_s"]["read"] > 0 and summary["session"]["tokens_per_s"] > 0


def reason_of(error: str) -> str:
    return error.split(": ", 1)[1].split(" (")[0]


def test_exif_rotated_image_reaches_the_model_upright(tmp_path):
    from make_inputs import exif_rotated

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jpg").write_bytes(exif_rotated())
    LocalRunner(job([tmp_path / "in"], tmp_path / "run", model_dir(tmp_path / "m"))).run()
    (record,) = by_id(tmp_path / "run").values()
    width, height = map(int, record.caption.split()[1].split("x"))
    red, green, blue = map(int, record.caption.split()[-1].split(","))
    assert height > width and red > 150 and blue < 100  # portrait, red half on top


def test_rerun_resumes_and_redoes_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(7):
        (folder / f"{i}.jpg").write_bytes(jpeg((i * 30, 0, 0)))
    model = model_dir(tmp_path / "m")
    LocalRunner(job([folder], tmp_path / "run", model)).run()
    assert len(ScriptedEngine.calls) == 7
    again = LocalRunner(job([folder], tmp_path / "run", model)).run()
    assert len(ScriptedEngine.calls) == 7 and again["session"]["skipped_done"] == 7
    (folder / "new.jpg").write_bytes(jpeg((1, 2, 3)))
    (folder / "same_as_0.jpg").write_bytes((folder / "0.jpg").read_bytes())
    third = LocalRunner(job([folder], tmp_path / "run", model)).run()
    assert [Path(i).name for i in ScriptedEngine.calls[7:]] == ["new.jpg"]  # the copy comes from the ledger
    assert third["session"]["duplicates_copied"] == 1
    records = by_id(tmp_path / "run")
    assert len(records) == 9 and records["in/same_as_0.jpg"].caption == records["in/0.jpg"].caption
    with pytest.raises(RunConflictError, match="decoding"):
        LocalRunner(job([folder], tmp_path / "run", model, decoding={"max_new_tokens": 5})).run()


def test_engine_crash_keeps_what_was_finished(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg((i * 20, 5, 5)))
    model = model_dir(tmp_path / "m")
    ScriptedEngine.fail_batches.add(2)
    with pytest.raises(EngineError):  # one batch per engine call here (group_batches=1)
        LocalRunner(job([folder], tmp_path / "run", model, batch_size=2, shard_size=3, group_batches=1)).run()
    kept = by_id(tmp_path / "run")
    assert len(kept) == 4  # two batches finished before the engine died: written, none lost
    ScriptedEngine.reset()
    LocalRunner(job([folder], tmp_path / "run", model, batch_size=2, shard_size=3, group_batches=1)).run()
    assert len(by_id(tmp_path / "run")) == 10 and len(ScriptedEngine.calls) == 6


def test_per_item_engine_error_is_a_record(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "engine-fail.jpg").write_bytes(jpeg((1, 1, 1)))
    (folder / "fine.jpg").write_bytes(jpeg((200, 1, 1)))
    summary = LocalRunner(job([folder], tmp_path / "run", model_dir(tmp_path / "m"))).run()
    assert summary["run"]["errors_by_reason"] == {"engine error": 1} and summary["run"]["by_status"]["ok"] == 1


def test_text_mode_structured_through_the_pipeline(tmp_path):
    (tmp_path / "caps.txt").write_text("a brown dog on a red sofa\na bus in the rain\n")
    model = model_dir(tmp_path / "m", "qwen3_5")
    LocalRunner(
        job(
            [tmp_path / "caps.txt"],
            tmp_path / "run",
            model,
            mode="text",
            profile="json-captioner",
            scaffold=str(SCAFFOLD),
        )
    ).run()
    records = sorted(read_records(str(tmp_path / "run")), key=lambda r: r.id)  # batches are grouped by size
    assert [r.status for r in records] == ["ok", "ok"]
    assert records[0].structured["setting"] == "indoor" and "sofa" in records[0].raw
    assert records[0].mode == "text"


def test_progress_plain_lines():
    from capmill.run.progress import Progress
    from capmill.run.stats import Stats

    stream = io.StringIO()
    stats = Stats(total=10, written=4)
    stats.status["error"] = 1
    progress = Progress(stream, rich=False, interval=0)
    progress.update(stats)
    progress.close(stats)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("capmill: 4/10 done (0 resumed, 1 errors)") and "img/s" in lines[0]


def test_duplicates_of_an_input_that_fails_in_prepare_get_its_error(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"same bytes")  # BLIP-2 takes no video: prepare refuses it
    (folder / "b.mp4").write_bytes(b"same bytes")
    model = model_dir(tmp_path / "m", "blip-2")
    summary = LocalRunner(job([folder], tmp_path / "run", model, profile="blip2-lora")).run()
    records = by_id(tmp_path / "run")
    assert [r.status for r in records.values()] == ["error", "error"] and summary["run"]["records"] == 2
    assert records[f"{folder.name}/b.mp4"].meta["duplicate_of"] == f"{folder.name}/a.mp4"
    assert ScriptedEngine.calls == []


def test_progress_rich_bar():
    from capmill.run.progress import Progress
    from capmill.run.stats import Stats

    stream = io.StringIO()
    stats = Stats(total=10, written=3)
    progress = Progress(stream, rich=True)
    progress.update(stats)
    stats.written = 10
    progress.close(stats)
    assert "capmill" in stream.getvalue() and "10/10" in stream.getvalue() and "img/s" in stream.getvalue()


def test_video_and_images_in_one_folder(tmp_path):
    import av
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    with av.open(str(folder / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 12 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    (folder / "still.jpg").write_bytes(jpeg())
    (folder / "bad.mp4").write_bytes(b"not a video")
    LocalRunner(job([folder], tmp_path / "run", model_dir(tmp_path / "m"), video_frames=4)).run()
    records = {Path(i).name: r for i, r in by_id(tmp_path / "run").items()}
    assert records["clip.mp4"].status == "ok" and records["clip.mp4"].caption.startswith("video 4 frames")
    assert records["still.jpg"].caption.startswith("image ")
    assert records["bad.mp4"].status == "error"


def test_downscaling_is_part_of_the_configuration(tmp_path):
    from capmill.models.catalog import get_profile

    (tmp_path / "in").mkdir()
    shutil.copy(PHOTOS[0], tmp_path / "in" / "p.jpg")  # 640 wide
    model = model_dir(tmp_path / "m")
    shrinking = get_profile("inkscope-2b").model_copy(update={"name": "small-side", "extra": {"max_image_side": 200}})
    LocalRunner(job([tmp_path / "in"], tmp_path / "run", model, profile=shrinking)).run()
    (record,) = by_id(tmp_path / "run").values()
    width, height = map(int, record.caption.split()[1].split("x"))
    assert max(width, height) <= 224  # downscaled to 200 before Qwen's resizing to multiples of 28
    job_again = job([tmp_path / "in"], tmp_path / "run", model, profile=shrinking)
    job_again.pipeline.decode = DecodeOptions(resize_max_side=300)
    with pytest.raises(RunConflictError, match="image_resize"):
        LocalRunner(job_again).run()


def test_url_downloads_run_concurrently(tmp_path):
    from local_http import _Handler

    with serve() as base:
        (tmp_path / "urls.txt").write_text("".join(f"{base}/lag/{i}.jpg\n" for i in range(24)))
        test_job = job([tmp_path / "urls.txt"], tmp_path / "run", model_dir(tmp_path / "m"), workers=1)
        test_job.pipeline.fetch_threads = 8
        test_job.pipeline.fetch = FetchOptions(timeout=10, retries=1)
        LocalRunner(test_job).run()
        peak = _Handler.max_in_flight
    records = by_id(tmp_path / "run")
    assert len(records) == 24 and all(r.status == "ok" for r in records.values())
    assert peak > 1, "downloads went one at a time"


def test_a_dead_decode_worker_loses_nothing(tmp_path, monkeypatch):
    """A decode worker killed mid-run (as the OOM killer would): its items are retried, the pool replaced."""
    import os
    import signal
    import threading
    import time

    import psutil

    folder = small_jpegs(tmp_path / "in", 60)
    monkeypatch.setenv("CAPMILL_SCRIPTED_DELAY", "0.02")
    killed = []

    def kill_worker():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            for child in psutil.Process().children(recursive=True):
                command = " ".join(child.cmdline())
                if "spawn_main" in command and "resource_tracker" not in command:
                    time.sleep(0.3)  # let it work a little first
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_worker)
    killer.start()
    summary = LocalRunner(job([folder], tmp_path / "run", model_dir(tmp_path / "m"), workers=1, batch_size=4)).run()
    killer.join()
    assert killed, "no worker process was found to kill"
    records = by_id(tmp_path / "run")
    assert len(records) == 60 and all(r.status == "ok" for r in records.values()), summary["run"]


def test_decoding_in_turns_never_overlaps_the_model(tmp_path, monkeypatch):
    """workers=0 (the default for a model on the CPU): every decode+prepare job runs while the model is idle."""
    import threading
    import time

    import capmill.run.pipeline as pipeline_module

    folder = small_jpegs(tmp_path / "in", 48)
    monkeypatch.setenv("CAPMILL_SCRIPTED_DELAY", "0.01")
    spans: dict[str, list[tuple[float, float]]] = {"decode": [], "model": []}
    lock = threading.Lock()

    def timed(kind, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                if kind == "decode":
                    time.sleep(0.004)  # a decode that takes time (a real photo's does), so overlap could happen
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spans[kind].append((start, time.perf_counter()))

        return run

    monkeypatch.setattr(pipeline_module, "load_and_prepare", timed("decode", pipeline_module.load_and_prepare))
    monkeypatch.setattr(ScriptedEngine, "generate", timed("model", ScriptedEngine.generate))
    model = model_dir(tmp_path / "m")
    LocalRunner(job([folder], tmp_path / "run", model, workers=0, batch_size=2, group_batches=1)).run()
    records = by_id(tmp_path / "run")
    assert len(records) == 48 and all(r.status == "ok" for r in records.values())
    assert len(spans["decode"]) == 48 and len(spans["model"]) == 24
    overlaps = [(d, m) for d in spans["decode"] for m in spans["model"] if d[0] < m[1] and m[0] < d[1]]
    # a job that started just before the model did may run on into it (the turn is taken per item): never more
    assert len(overlaps) <= len(spans["model"]), overlaps[:3]


def test_worker_processes_build_the_requests(tmp_path):
    """workers=1: the decode process hands back finished Requests, equal to the ones the captioner builds here."""
    from concurrent.futures import ProcessPoolExecutor

    from capmill.records import Item
    from capmill.run.workers import load_and_prepare, make_pool

    cap = captioner(model_dir(tmp_path / "m"))
    builder = cap.preparer()
    items = [Item(id=p.stem, source=str(p), data=p.read_bytes()) for p in PHOTOS]
    pool = make_pool(1)
    assert isinstance(pool, ProcessPoolExecutor)
    with pool:
        loaded = [pool.submit(load_and_prepare, it, DecodeOptions(), FetchOptions(), builder, None, False).result()
                  for it in items]  # fmt: skip
    for item, got in zip(items, loaded, strict=True):
        want = cap.prepare(Item(id=item.id, source=item.source, data=item.data))
        assert got.error is None and got.prepare_error is None and got.prepare_seconds > 0
        assert got.request.messages == want.messages and got.request.decoding == want.decoding
        assert [im.size for im in got.request.images] == [im.size for im in want.images]
        assert [im.tobytes() for im in got.request.images] == [im.tobytes() for im in want.images]
        assert got.item.image is None and got.item.data is None  # only the Request came back
        assert got.item.content_hash == item.content_hash


def test_a_worker_reports_what_the_builder_refuses(tmp_path):
    from capmill.records import Item
    from capmill.run.workers import load_and_prepare

    cap = captioner(model_dir(tmp_path / "m"))
    item = Item(id="t", source="note.txt", kind="text", text="a caption")
    got = load_and_prepare(item, DecodeOptions(), FetchOptions(), cap.preparer(), "caption")
    assert got.request is None and got.prepare_error is not None
    assert "note.txt" in str(got.prepare_error) and "mode 'text'" in str(got.prepare_error)
