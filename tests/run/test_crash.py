"""Crash safety (issue 4 item 5): SIGKILL a real `capmill caption` process at random moments, resume, repeat.

The engine is the scripted one (this tests the run folder and ledger, not a model); everything else is the real
CLI in a fresh interpreter, with decode worker processes, killed as a process group like a machine going down.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from make_inputs import jpeg  # noqa: E402
from run_scripted import cli_command, model_dir  # noqa: E402

from capmill.run.runfolder import read_records  # noqa: E402

KILLS = 10


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    # enough inputs, each batch slow enough, that ten kills land before the run can finish on an idle machine
    for i in range(300):
        (folder / f"img{i:03d}.jpg").write_bytes(jpeg((i * 5 % 256, i * 11 % 256, 40)))
    for i in range(4):  # duplicates of earlier images
        (folder / f"dup{i}.jpg").write_bytes((folder / f"img{i:03d}.jpg").read_bytes())
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"not an image")
    expected = {f"in/{p.name}" for p in folder.iterdir()}  # ids: relative to the input folder
    run_dir = tmp_path / "run"
    command = cli_command(
        sys.executable, "caption", str(folder), "--model", str(model_dir(tmp_path / "m")), "--profile", "inkscope-2b",
        "--engine", "scripted-test", "--run-dir", str(run_dir), "--batch-size", "4", "--shard-size", "3",
        "--workers", "1", "--quiet",
    )  # fmt: skip
    env = {**os.environ, "CAPMILL_SCRIPTED_DELAY": "0.08", "OMP_NUM_THREADS": "1"}
    rng = random.Random(int(os.environ.get("CAPMILL_CRASH_SEED", "20261122")))
    progress, kills, attempt = [], 0, 0
    while kills < KILLS and attempt < 2 * KILLS:
        before, started = count_records(run_dir), time.time_ns()
        proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        if attempt % 3 == 0:
            time.sleep(rng.uniform(0.0, 1.5))  # any moment, start-up included
        else:
            wait_for_activity(run_dir, proc, started)  # a moment while shards are being written and committed
            time.sleep(rng.uniform(0.0, 0.5))
        attempt += 1
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        check_consistent(run_dir, expected)
        progress.append(count_records(run_dir) - before)
    print("records added before each kill:", progress)
    assert kills == KILLS and sum(1 for p in progress if p) >= 3, progress
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    ids = check_consistent(run_dir, expected)
    assert ids == expected, f"missing {sorted(expected - ids)[:5]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["session"]["completed"] and summary["run"]["records"] == len(expected)
    assert summary["run"]["errors_by_reason"] == {"empty file": 1, "not an image": 1}
    records = {r.id: r for r in read_records(str(run_dir))}
    for i in range(4):  # each duplicate has the caption of its original
        assert records[f"in/dup{i}.jpg"].caption == records[f"in/img{i:03d}.jpg"].caption


def wait_for_activity(run_dir: Path, proc: subprocess.Popen, started: int, limit: float = 20.0) -> None:
    """Until the run writes a shard (a temporary one appears), or the process ends."""
    records, deadline = run_dir / "records", time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        for tmp in records.glob(".part-*.tmp") if records.is_dir() else ():
            try:
                if tmp.stat().st_mtime_ns >= started:  # not one left by the previous, killed process
                    return
            except FileNotFoundError:
                pass
        time.sleep(0.01)


def count_records(run_dir: Path) -> int:
    if not (run_dir / "records").is_dir():
        return 0
    return sum(1 for _ in read_records(str(run_dir)))


def check_consistent(run_dir: Path, expected: set[str]) -> set[str]:
    """Every shard whole, no id twice, ledger == shards (after the recovery that opening a run performs)."""
    if not (run_dir / "records").is_dir():
        return set()
    shard_ids: list[str] = []
    for shard in sorted((run_dir / "records").glob("part-*.jsonl")):
        text = shard.read_text()
        assert text.endswith("\n"), f"{shard.name} is half-written"
        shard_ids += [json.loads(line)["id"] for line in text.splitlines()]
    assert len(shard_ids) == len(set(shard_ids)), "an input was written twice"
    assert set(shard_ids) <= expected
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        ledger = [row[0] for row in db.execute("SELECT id FROM items")]
        ledger_shards = {row[0] for row in db.execute("SELECT name FROM shards")}
    # the ledger may lag the shards by the one shard renamed just before the kill; never the other way round
    assert set(ledger) <= set(shard_ids)
    on_disk = {p.name for p in (run_dir / "records").glob("part-*.jsonl")}
    assert ledger_shards <= on_disk and len(on_disk - ledger_shards) <= 1
    return set(shard_ids)
