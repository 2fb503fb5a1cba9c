"""The public Python API: `capmill.caption_dataset` is `capmill caption` (same run, same records, resumable
either way), `capmill.read_records` reads a run folder, and the exported names are the real ones."""

from __future__ import annotations

import shutil

import pytest

import capmill
from capmill.cli.main import main


@pytest.fixture
def photos(tmp_path, coco_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in coco_photos[:5]:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_caption_dataset_is_the_cli_run_and_resumes_both_ways(tmp_path, photos, tiny_model, capsys):
    model = str(tiny_model("qwen2_vl"))
    api_dir, cli_dir = tmp_path / "api", tmp_path / "cli"
    options = {"model": model, "profile": "inkscope-2b", "max_new_tokens": 6, "format": "parquet"}

    summary = capmill.caption_dataset(photos, run_dir=api_dir, **options)
    assert summary["run"]["records"] == 5 and summary["run"]["by_status"] == {"ok": 5}
    assert summary["session"]["captioned"] == 5
    assert summary["run"]["config"]["profile"] == "inkscope-2b" and summary["run"]["config"]["format"] == "parquet"

    argv = [str(photos), "--model", model, "--profile", "inkscope-2b", "--max-new-tokens", "6", "--format", "parquet"]
    assert main(["caption", *argv, "--run-dir", str(cli_dir), "--quiet"]) == 0
    api_records = {r.id: r for r in capmill.read_records(api_dir)}
    cli_records = {r.id: r for r in capmill.read_records(cli_dir)}
    assert all(isinstance(r, capmill.Record) for r in api_records.values())
    assert sorted(api_records) == sorted(cli_records)
    assert {i: r.caption for i, r in api_records.items()} == {i: r.caption for i, r in cli_records.items()}
    assert {(r.content_hash, r.prompt_hash, str(r.decoding)) for r in api_records.values()} == {
        (r.content_hash, r.prompt_hash, str(r.decoding)) for r in cli_records.values()
    }

    # the CLI resumes the Python run, and Python resumes it again: nothing is captioned twice
    assert main(["caption", *argv, "--run-dir", str(api_dir), "--quiet"]) == 0
    again = capmill.caption_dataset([str(p) for p in [photos]], run_dir=str(api_dir), **options)
    assert again["session"]["captioned"] == 0 and again["session"]["skipped_done"] == 5
    assert again["run"]["records"] == 5


def test_caption_dataset_out_file_and_option_errors(tmp_path, photos, tiny_model):
    model = str(tiny_model("qwen2_vl"))
    out = tmp_path / "captions.jsonl"
    summary = capmill.caption_dataset(str(photos), out=out, model=model, max_new_tokens=2, batch_size=2)
    assert summary["run"]["records"] == 5 and len(out.read_text().splitlines()) == 5
    assert len(list(capmill.read_records(f"{out}.capmill"))) == 5

    with pytest.raises(capmill.ConfigError, match="unknown option 'batchsize'; did you mean 'batch_size'"):
        capmill.caption_dataset(photos, run_dir=tmp_path / "x", batchsize=3)
    with pytest.raises(capmill.ConfigError, match="format='csv'; choose one of"):
        capmill.caption_dataset(photos, run_dir=tmp_path / "x", format="csv")
    with pytest.raises(capmill.ConfigError, match="needs run_dir="):
        capmill.caption_dataset(photos, model=model)
    with pytest.raises(capmill.ConfigError, match="unknown option 'show_prompt'"):
        capmill.caption_dataset(photos, run_dir=tmp_path / "x", show_prompt=True)
    with pytest.raises(capmill.ConfigError, match="not a capmill run folder"):
        list(capmill.read_records(tmp_path))


def test_exported_names_are_the_real_objects():
    from capmill.data.sinks import SINKS
    from capmill.data.sources import SOURCES
    from capmill.engines import ENGINES
    from capmill.engines.base import Engine
    from capmill.models.catalog import PROFILES
    from capmill.models.profile import Profile

    assert capmill.ENGINES is ENGINES and capmill.PROFILES is PROFILES
    assert capmill.SOURCES is SOURCES and capmill.SINKS is SINKS
    assert capmill.Engine is Engine and capmill.Profile is Profile
    assert "transformers" in capmill.ENGINES and "inkscope-2b" in capmill.PROFILES
    assert set(capmill.__all__) <= set(dir(capmill))
    with pytest.raises(AttributeError):
        capmill.no_such_name  # noqa: B018
