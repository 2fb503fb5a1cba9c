"""A plugin package, installed by pip, used from the command line and from Python, then removed.

pip installs tests/plugins/capmill-echo (an engine, a profile, a source and a sink, declared as entry points)
into a folder of its own that the subprocesses below put on their path, the way `pip install --target` is used:
the metadata and discovery are pip's and importlib.metadata's, and other tests running beside this one in the
same environment never see the plugin. Removing the folder uninstalls it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).resolve().parent / "capmill-echo"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "capmill-echo", work / "site"
    shutil.copytree(PLUGIN, source)  # the build writes beside the sources: keep the repository clean
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*cmd, "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    assert list(target.glob("capmill_echo-0.1.0.dist-info/entry_points.txt"))
    yield target
    shutil.rmtree(target)


def capmill(site: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = [str(ROOT / "src")] + ([str(site)] if site else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "capmill", *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_the_plugin_is_listed(installed, tmp_path):
    done = capmill(installed, "plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(done.stdout)}
    assert set(rows) == {("engine", "echo"), ("profile", "echo-short"), ("source", "swatches"), ("sink", "tsv")}
    assert {r["package"] for r in rows.values()} == {"capmill-echo"}
    assert rows[("engine", "echo")]["target"] == "capmill_echo:EchoEngine"
    models = capmill(installed, "models", "echo-short", cwd=tmp_path)
    assert models.returncode == 0 and "Say what you see, briefly." in models.stdout


def test_caption_with_the_plugin_engine_profile_and_source(installed, tmp_path):
    args = ["caption", "swatches:4", "--engine", "echo", "--profile", "echo-short", "--model", "echo"]
    done = capmill(installed, *args, "--out", "out.jsonl", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["swatch-000", "swatch-001", "swatch-002", "swatch-003"]
    assert {r["status"] for r in records} == {"ok"} and {r["engine"] for r in records} == {"echo"}
    assert records[1]["caption"].startswith("echo of 1 image(s) 40x24 rgb(40, 100, 200); prompt: Say what you see")
    again = capmill(installed, *args, "--out", "out.jsonl", cwd=tmp_path)
    assert again.returncode == 0 and "4 records" in again.stderr  # resumed: nothing captioned twice
    summary = json.loads((tmp_path / "out.jsonl.capmill" / "summary.json").read_text())
    assert summary["session"]["captioned"] == 0


def test_the_plugin_sink_from_python(installed, tmp_path):
    """A run's records exported through the plugin's sink (run folders keep capmill's own shard formats)."""
    code = (
        "import capmill\n"
        "s = capmill.caption_dataset('swatches:3', run_dir='run', engine='echo', profile='echo-short', model='echo')\n"
        "with capmill.SINKS.get('tsv')('out.tsv') as sink:\n"
        "    for record in capmill.read_records('run'):\n"
        "        sink.write(record)\n"
        "print(s['run']['records'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(installed)]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    lines = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
    assert [(row[0], row[1]) for row in lines] == [("swatch-000", "ok"), ("swatch-001", "ok"), ("swatch-002", "ok")]
    assert lines[0][2].startswith("echo of 1 image(s) 32x24")


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    photos = str(ROOT / "tests" / "data" / "coco")
    done = capmill(None, "caption", photos, "--engine", "echo", "--model", "echo", "--out", "o.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "unknown engine 'echo'" in done.stderr
    listed = capmill(None, "plugins", cwd=tmp_path)
    assert listed.returncode == 0 and "echo" not in listed.stdout
