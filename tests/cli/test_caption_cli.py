"""`capmill caption`: the real CLI on the real tiny Qwen2-VL through the real Captioner, and every output flag."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "run"))
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from make_inputs import COCO, jpeg  # noqa: E402
from run_scripted import NAME, ScriptedEngine, model_dir, register  # noqa: E402

from capmill.cli.main import main  # noqa: E402

FIELDS = {"id", "source", "status", "caption", "structured", "raw", "error"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for photo in sorted(COCO.glob("*.jpg"))[:3]:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_real_tiny_model_end_to_end_and_resume(tmp_path, photos, tiny_model, capsys):
    model = str(tiny_model("qwen2_vl"))
    out = tmp_path / "captions.jsonl"
    argv = ["caption", str(photos), "--model", model, "--profile", "inkscope-2b", "--out", str(out),
            "--max-new-tokens", "6", "--batch-size", "2", "--workers", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = lines(out)
    assert all(FIELDS <= set(r) for r in rows) and len(rows) == 4
    status = {Path(r["id"]).name: r["status"] for r in rows}
    assert status == {**{p.name: "ok" for p in sorted(COCO.glob("*.jpg"))[:3]}, "broken.jpg": "error"}
    # the pipeline gives what the Python API gives for the same model, images and settings
    from capmill.captioner import Captioner

    api = Captioner(model=model, profile="inkscope-2b", decoding={"max_new_tokens": 6}, batch_size=1)
    expected = {Path(r.source).name: r.caption for r in api.caption(sorted(COCO.glob("*.jpg"))[:3])}
    api.close()
    assert {Path(r["id"]).name: r["caption"] for r in rows if r["status"] == "ok"} == expected
    summary = json.loads((tmp_path / "captions.jsonl.capmill" / "summary.json").read_text())
    assert summary["session"]["completion_tokens"] > 0 and summary["session"]["time_s"]["load"] > 0
    before = out.read_bytes()
    assert main(argv) == 0  # the same command again: resumes, nothing redone
    summary = json.loads((tmp_path / "captions.jsonl.capmill" / "summary.json").read_text())
    assert summary["session"]["skipped_done"] == 4 and summary["session"]["captioned"] == 0
    assert out.read_bytes() == before
    assert main([("7" if a == "6" else a) for a in argv]) == 2  # other settings, same output: refused
    assert "different configuration" in capsys.readouterr().err


def test_show_prompt_renders_without_the_model(tiny_model, photos, capsys):
    model = str(tiny_model("qwen2_vl"))
    assert main(["caption", str(photos / sorted(p.name for p in photos.glob("0*.jpg"))[0]), "--model", model,
                 "--profile", "inkscope-2b", "--show-prompt"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Generate a detailed caption for this image." in printed and "<|vision_start|>" in printed


@pytest.fixture
def scripted(tmp_path):
    register()
    ScriptedEngine.reset()
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(jpeg((i * 40, 10, 10)))
    return folder, ["--model", str(model_dir(tmp_path / "m")), "--profile", "inkscope-2b", "--engine", NAME,
                    "--workers", "0", "--quiet"]  # fmt: skip


def test_stdout_when_no_output_is_named(scripted, capsys):
    folder, common = scripted
    assert main(["caption", str(folder), *common]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and all(FIELDS <= set(r) and r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("fmt", ["parquet", "webdataset", "sidecar", "hf"])
def test_formats(scripted, tmp_path, fmt):
    folder, common = scripted
    run_dir = tmp_path / "run"
    assert main(["caption", str(folder), *common, "--run-dir", str(run_dir), "--format", fmt, "--shard-size", "2"]) == 0
    from capmill.run.runfolder import read_records

    assert sorted(Path(r.id).name for r in read_records(str(run_dir))) == [f"{i}.jpg" for i in range(5)]
    ext = {"parquet": ".parquet", "webdataset": ".tar", "sidecar": ".jsonl", "hf": ".parquet"}[fmt]
    assert len(list((run_dir / "records").glob(f"part-*{ext}"))) == 3
    if fmt == "sidecar":
        assert (folder / "0.txt").read_text().startswith("image ")
    if fmt == "hf":
        assert (run_dir / "dataset" / "dataset_info.json").exists()


def test_parquet_out_and_config_errors(scripted, tmp_path, capsys):
    folder, common = scripted
    assert main(["caption", str(folder), *common, "--out", str(tmp_path / "o.parquet")]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "o.parquet").num_rows == 5
    assert main(["caption", str(folder), *common, "--out", str(tmp_path / "o.txt")]) == 2
    assert main(["caption", str(tmp_path / "missing"), *common]) == 2
    err = capsys.readouterr().err
    assert "use a .jsonl or .parquet file" in err and "no such file or folder" in err


def test_json_captioner_structured_to_parquet_on_the_real_tiny_qwen3_5(tmp_path, photos, tiny_model):
    """Issue 5 (c)'s path: a folder to Parquet under the scaffolded JSON captioner; same records as the API."""
    from capmill.captioner import Captioner
    from capmill.run.runfolder import read_records

    model = str(tiny_model("qwen3_5"))
    scaffold = str(Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl")
    run_dir = tmp_path / "run"
    argv = ["caption", str(photos), "--model", model, "--profile", "json-captioner", "--scaffold", scaffold,
            "--run-dir", str(run_dir), "--format", "parquet", "--max-new-tokens", "12", "--batch-size", "3",
            "--workers", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = {Path(r.id).name: r for r in read_records(str(run_dir))}
    assert records.pop("broken.jpg").status == "error"
    assert all(r.status in ("ok", "repaired", "invalid") and r.raw is not None for r in records.values())
    assert {r.mode for r in records.values()} == {"structured"}
    api = Captioner(model=model, profile="json-captioner", scaffold=scaffold, decoding={"max_new_tokens": 12})
    expected = {
        Path(r.source).name: (r.status, r.raw, r.structured) for r in api.caption(sorted(photos.glob("0*.jpg")))
    }
    api.close()
    assert {n: (r.status, r.raw, r.structured) for n, r in records.items()} == expected


def test_default_workers_take_turns_with_a_model_on_the_cpu():
    """No --workers: a model computing on this machine's CPU decodes in turns (0); a remote server gets cores-1."""
    import os

    from capmill.cli.caption import default_workers

    assert default_workers({"engine": "transformers", "engine_options": {"device": "cpu"}}, None) == 0
    assert default_workers({"engine": "transformers", "engine_options": {}}, "cpu,cpu") == 0
    remote = {"engine": "openai", "engine_options": {"base_url": "http://127.0.0.1:9/v1"}}
    assert default_workers(remote, None) == max(1, (os.cpu_count() or 2) - 1)


def test_exact_needs_an_engine_that_has_it(tmp_path, capsys):
    from capmill.cli.caption import exact_options
    from capmill.cli.main import main

    assert exact_options("transformers", True) == {"batch_invariant": True}
    assert exact_options("openai", False) == {}
    (tmp_path / "a.txt").write_text("x")
    code = main(["caption", str(tmp_path), "--model", "m", "--profile", "generic", "--engine", "openai", "--exact"])
    assert code == 2
    assert "--exact is not an option of engine 'openai'" in capsys.readouterr().err


def test_retry_errors_and_max_error_rate_flags(scripted, tmp_path, capsys):
    folder, common = scripted
    (folder / "bad.jpg").write_bytes(b"not an image")  # a final error: 1 of 6 records
    run_dir = tmp_path / "run"
    argv = ["caption", str(folder), *common, "--run-dir", str(run_dir)]
    assert main([*argv, "--max-error-rate", "0.1"]) == 4
    assert "error rate 0.167 (1 of 6 records)" in capsys.readouterr().err
    assert "max-error-rate 0.1" in json.loads((run_dir / "summary.json").read_text())["failed"]
    assert main([*argv, "--max-error-rate", "0.2"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())["session"]
    assert summary["skipped_done"] == 6  # the final error counts as done
    assert main([*argv, "--retry-errors"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())["session"]
    assert summary["skipped_done"] == 5 and summary["records_written"] == 1  # only the error was tried again
    assert main([*argv, "--max-error-rate", "2"]) == 2  # a fraction, or a clear config error
