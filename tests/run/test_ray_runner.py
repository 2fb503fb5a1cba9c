"""The Ray Data runner on a real local Ray cluster: same records as the local runner, resume, exactly once."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from capmill.errors import ConfigError

pytestmark = pytest.mark.ray


def test_pool_shape_leaves_room_for_the_readers():
    from capmill.run.ray_runner import RayOptions, _pool_shape

    assert _pool_shape({"CPU": 2.0}, RayOptions()) == (1, 1.0, 0.0)
    assert _pool_shape({"CPU": 16.0}, RayOptions()) == (15, 1.0, 0.0)
    assert _pool_shape({"CPU": 16.0, "GPU": 4.0}, RayOptions()) == (4, 1.0, 1.0)
    assert _pool_shape({"CPU": 8.0}, RayOptions(actors=2, actor_cpus=3)) == (2, 3.0, 0.0)
    with pytest.raises(ConfigError, match="no room for the read tasks"):
        _pool_shape({"CPU": 2.0}, RayOptions(actors=2))
    with pytest.raises(ConfigError, match="GPU"):
        _pool_shape({"CPU": 8.0, "GPU": 1.0}, RayOptions(actors=2, actor_gpus=1))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _inputs(tmp_path, coco_photos):
    """A: two photos. B: two more, a copy of A's first and of B's first, an empty file, a text file named .jpg."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    for photo in coco_photos[:2]:
        shutil.copy(photo, a / photo.name)
    for photo in coco_photos[2:4]:
        shutil.copy(photo, b / photo.name)
    shutil.copy(coco_photos[0], b / "copy-of-a.jpg")  # its original was captioned in an earlier session
    shutil.copy(coco_photos[2], b / "zz-copy-of-b.jpg")  # its original is captioned in the same session
    (b / "empty.jpg").write_bytes(b"")
    (b / "notes.jpg").write_text("not an image", encoding="utf-8")
    return str(a), str(b)


def _records(run_dir: str) -> list[dict]:
    from capmill.run.runfolder import read_records

    rows = []
    for record in read_records(run_dir):
        row = record.to_dict()
        row.pop("timings")
        # PIL names a BytesIO by its address in some messages; that part differs between any two runs
        row["error"] = re.sub(r" at 0x[0-9a-f]+", "", row["error"]) if row["error"] else None
        rows.append(row)
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.slow
def test_ray_runner_matches_local_resumes_and_writes_parquet(ray_cluster, tiny_model, coco_photos, tmp_path):
    """Folder A is done by a first session; a Ray session over A and B resumes it; records equal a local run's."""
    from capmill.cli.main import main
    from capmill.run.ledger import Ledger

    a, b = _inputs(tmp_path, coco_photos)
    common = ["--model", str(tiny_model("qwen3_5")), "--profile", "generic", "--prompt", "Describe."]
    common += ["--max-new-tokens", "6", "--batch-size", "2", "--format", "parquet", "--quiet", "--workers", "0"]
    local, remote = str(tmp_path / "local"), str(tmp_path / "ray")

    assert main(["caption", a, b, *common, "--run-dir", local]) == 0
    assert main(["caption", a, *common, "--run-dir", remote]) == 0  # session 1: the same ledger, local runner
    assert main(["caption", a, b, *common, "--run-dir", remote, "--runner", "ray"]) == 0

    want, got = _records(local), _records(remote)
    assert len(want) == 8
    assert got == want  # the same records, field by field (timings aside)
    assert sorted(r["status"] for r in got) == ["error", "error"] + ["ok"] * 6
    copies = {r["id"].rsplit("/", 1)[-1]: r["meta"].get("duplicate_of") for r in got if "copy" in r["id"]}
    assert all(copies.values()) and len(copies) == 2

    names = os.listdir(os.path.join(remote, "records"))
    assert names and all(n.endswith(".parquet") for n in names)
    ledger = Ledger(os.path.join(remote, "ledger.sqlite"))
    try:
        assert sorted(ledger.ids()) == [r["id"] for r in got]  # every input exactly once, in ledger and records
    finally:
        ledger.close()
    with open(os.path.join(remote, "summary.json"), encoding="utf-8") as f:
        session = json.load(f)["session"]
    assert session["runner"] == "ray"
    assert session["skipped_done"] == 2  # folder A was done in the first session
    assert session["captioned"] == 2  # B's two new photos; both copies were not captioned again
    assert session["duplicates_copied"] == 2
    assert sum(session["errors_by_reason"].values()) == 2

    # nothing left: a rerun adds and repeats nothing (and needs no cluster work)
    assert main(["caption", a, b, *common, "--run-dir", remote, "--runner", "ray"]) == 0
    assert _records(remote) == got


@pytest.mark.slow
def test_local_and_ray_share_one_configuration_key_and_pixels(ray_cluster, tiny_model, coco_photos, tmp_path):
    """A profile that downscales photos (`extra["max_image_side"]`): both runners key the run alike and the model
    sees the same pixels (equal prompt token counts and greedy captions per input)."""
    import functools

    from capmill.captioner import Captioner
    from capmill.models.catalog import get_profile
    from capmill.run.local import CaptionJob, LocalRunner
    from capmill.run.pipeline import PipelineOptions
    from capmill.run.ray_runner import RayRunner

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in coco_photos[:3]:
        shutil.copy(photo, photos / photo.name)
    profile = get_profile("generic").model_copy(update={"extra": {"max_image_side": 96}, "prompt": "Describe."})
    make = functools.partial(
        Captioner, model=str(tiny_model("qwen3_5")), profile=profile, decoding={"max_new_tokens": 5}, batch_size=2
    )

    def job(run_dir):
        return CaptionJob(
            inputs=[str(photos)], make_captioner=make, run_dir=str(run_dir), fmt="parquet", progress=False,
            pipeline=PipelineOptions(batch_size=2, workers=0), runner_options={"actors": 1},
        )  # fmt: skip

    LocalRunner(job(tmp_path / "local")).run()
    RayRunner(job(tmp_path / "ray")).run()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["settings_hash"] == manifests[1]["settings_hash"]
    assert manifests[0]["config"]["image_resize"] == {"max_side": 96, "draft": False}
    local, remote = _records(str(tmp_path / "local")), _records(str(tmp_path / "ray"))
    assert [(r["id"], r["tokens"], r["caption"]) for r in local] == [
        (r["id"], r["tokens"], r["caption"]) for r in remote
    ]
    assert all(r["status"] == "ok" for r in local) and len(local) == 3


@pytest.mark.slow
def test_ray_run_stops_when_its_server_is_down(ray_cluster, tiny_model, coco_photos, tmp_path):
    """The OpenAI-compatible engine pointed at a port where nothing listens: every caption fails retryably, the
    run stops on its circuit breaker, and what it wrote is marked retryable (the next run redoes it)."""
    import functools
    import socket

    from capmill.captioner import Captioner
    from capmill.errors import EngineUnavailableError
    from capmill.run.local import CaptionJob
    from capmill.run.pipeline import PipelineOptions
    from capmill.run.ray_runner import RayRunner

    with socket.socket() as s:  # a free port, closed again: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in coco_photos:
        shutil.copy(photo, photos / photo.name)
    options = {"base_url": f"http://127.0.0.1:{port}/v1", "check_server": False, "max_retries": 0}
    make = functools.partial(
        Captioner, model=str(tiny_model("qwen2_vl")), profile="inkscope-2b", engine="openai", engine_options=options
    )
    job = CaptionJob(
        inputs=[str(photos)], make_captioner=make, run_dir=str(tmp_path / "run"), fmt="parquet", progress=False,
        pipeline=PipelineOptions(batch_size=2, max_consecutive_failures=3), runner_options={"actors": 1},
    )  # fmt: skip
    with pytest.raises(EngineUnavailableError, match="3 engine failures in a row"):
        RayRunner(job).run()
    records = _records(str(tmp_path / "run"))
    assert 3 <= len(records) < len(coco_photos)
    assert all(r["status"] == "error" and r["error_kind"] == "retryable" for r in records)
