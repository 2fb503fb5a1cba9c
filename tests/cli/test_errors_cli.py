"""Errors that help: the failing subcommand's usage, a "did you mean", no Python reprs, a last line saying what to do,
and library warnings held back unless --verbose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capmill.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"
SCAFFOLD = Path(__file__).resolve().parents[1] / "models" / "data" / "scaffold_standin.jsonl"


def _fail(capsys, argv: list[str]) -> list[str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_misspelled_flag_shows_the_subcommands_usage_and_a_guess(capsys):
    err = _fail(capsys, ["caption", "photos/", "--run_dir", "x"])
    assert err[0].startswith("usage: capmill caption ")
    assert "capmill caption: error: unrecognized arguments: --run_dir x" in err
    assert "did you mean --run-dir (for --run_dir)?" in err
    assert err[-1] == "run `capmill caption --help` to see every option"


def test_misspelled_subcommand_and_choice(capsys):
    err = _fail(capsys, ["captoin", "photos/"])
    assert "did you mean 'caption'?" in err and err[-1] == "run `capmill --help` to see every option"
    err = _fail(capsys, ["testing", "build-model", "qwen2vl", "x"])
    assert err[0].startswith("usage: capmill testing build-model")
    assert "did you mean 'qwen2_vl'?" in err


def test_unknown_names_get_a_guess_and_every_error_ends_with_what_to_do(capsys, tmp_path):
    assert main(["models", "inkscop"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("capmill models: error: unknown profile 'inkscop'")
    assert err[-1] == "did you mean 'inkscope-2b'?"
    assert main(["caption", str(tmp_path / "missing"), "--model", str(tmp_path), "--out", "a.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no such file or folder" in err[0]
    assert err[-1].startswith("fix what is named above and run the same command again (`capmill caption --help`")
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "capmill train --help" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_broken_model_folder_says_how_to_get_one(capsys, tmp_path, monkeypatch, coco_photos):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "model").mkdir()
    assert main(["caption", str(coco_photos[0]), "--model", str(tmp_path / "model"), "--out", "a.jsonl"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "capmill testing build-model" in last


def test_a_file_that_is_not_an_image_is_named_without_python_reprs(tmp_path, tiny_model, coco_photos, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(coco_photos[0], photos / "real.jpg")
    (photos / "notes.jpg").write_text("shopping list: eggs", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    model = str(tiny_model("qwen2_vl"))
    argv = ["caption", str(photos), "--model", model, "--out", str(out), "--max-new-tokens", "2", "--quiet"]
    assert main(argv) == 0
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    bad = records["notes.jpg"]
    assert bad["status"] == "error" and "not an image" in bad["error"]
    assert "<" not in bad["error"] and "object" not in bad["error"] and "0x" not in bad["error"]
    assert "19 bytes" in bad["error"]
    assert records["real.jpg"]["status"] != "error"


@pytest.mark.slow
def test_library_warnings_are_held_back_unless_verbose(tmp_path, tiny_model, coco_photos):
    """A tiny Qwen3.5 on CPU: transformers' reference-kernel notices and deprecation warnings become one line."""
    model = str(tiny_model("qwen3_5"))
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "capmill", "caption", str(coco_photos[0]), "--model", model]
    base += ["--profile", "json-captioner", "--scaffold", str(SCAFFOLD), "--max-new-tokens", "3", "--quiet"]

    quiet = subprocess.run([*base, "--out", str(tmp_path / "a.jsonl")], env=env, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "falling back to its reference PyTorch implementation" not in quiet.stderr
    assert "FutureWarning" not in quiet.stderr and "deprecated" not in quiet.stderr
    held = [line for line in quiet.stderr.splitlines() if "held back" in line]
    assert len(held) == 1 and held[0].endswith("library warnings held back; --verbose shows them")

    loud = [*base, "--out", str(tmp_path / "b.jsonl"), "--verbose"]
    verbose = subprocess.run(loud, env=env, capture_output=True, text=True)
    assert verbose.returncode == 0, verbose.stderr
    assert "falling back to its reference PyTorch implementation" in verbose.stderr
    assert "held back" not in verbose.stderr


def test_no_command_and_an_internal_error_also_end_with_what_to_do(capsys, monkeypatch):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "usage: capmill" in captured.out
    assert captured.err.strip().splitlines()[-1] == "name a command: `capmill COMMAND --help` shows its options"

    import capmill.cli.models

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(capmill.cli.models, "run", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in err
    assert err[-2] == "capmill models: internal error: ValueError: a bug"
    assert err[-1] == "this is a bug in capmill: please report it with the traceback above"


def test_a_server_that_cannot_bind_says_what_to_do(tmp_path):
    import socket

    (tmp_path / "run" / "records").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "capmill", "serve", "--browse", str(tmp_path / "run"), "--port", str(port)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "address already in use" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("capmill serve: stopped (exit code")
