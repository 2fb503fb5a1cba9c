"""A real server outage under a real run: `capmill serve` (the tiny Qwen2-VL model, on 127.0.0.1) is the backend
of `capmill caption --engine openai`; the server is killed mid-run, the run stops on its circuit breaker with a
clear message, and once the server is back the same command finishes with no error record and every id once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from capmill.run.runfolder import read_records
from shared_data import SHARED_COCO

COCO = SHARED_COCO / "val2017"
N = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "capmill", "serve", "--model", str(model), "--profile", "inkscope-2b",
           "--port", str(port), "--max-new-tokens", "6", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"capmill serve died: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("capmill serve did not start")


def committed(run_dir: Path) -> int:
    if not (run_dir / "ledger.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(run_dir / "ledger.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM items WHERE status != 'error'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.skipif(not COCO.is_dir(), reason="needs shared/data/coco beside the repository")
def test_server_killed_mid_run_then_restarted(tmp_path, tiny_model):
    pytest.importorskip("fastapi")
    model = tiny_model("qwen2_vl")
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(COCO.glob("*.jpg"))[:N]:  # real photos of many sizes and aspect ratios
        shutil.copy(path, photos / path.name)
    port, run_dir, log = free_port(), tmp_path / "run", tmp_path / "server.log"
    command = [sys.executable, "-m", "capmill", "caption", str(photos), "--model", str(model), "--profile",
               "inkscope-2b", "--engine", "openai", "--run-dir", str(run_dir), "--batch-size", "2",
               "--max-new-tokens", "6", "--shard-size", "2", "--commit-seconds", "1",
               "--max-consecutive-failures", "4", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OMP_NUM_THREADS": "1"}
    server = start_server(model, port, log)
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while committed(run_dir) < 4 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.poll() is None, "the run ended before the server could be killed: give it more photos"
        os.killpg(server.pid, signal.SIGKILL)  # the server goes down, as a crashed or preempted machine does
        server.wait()
        _, stderr = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert run.returncode == 3, stderr
    assert "engine failures in a row" in stderr and "run the same command again" in stderr, stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not summary["session"]["completed"] and summary["run"]["records"] < N
    assert set(summary["run"].get("errors_by_kind", {})) <= {"retryable"}  # an outage is never a bad input
    done_before = summary["run"]["by_status"].get("ok", 0)
    assert done_before >= 4

    server = start_server(model, port, log)  # the server is back
    try:
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert again.returncode == 0, again.stderr
    records = list(read_records(str(run_dir)))
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)) == N  # every id once
    assert sorted(ids) == sorted(f"photos/{p.name}" for p in photos.iterdir())
    assert all(r.status == "ok" for r in records), [(r.id, r.error) for r in records if r.status != "ok"][:3]
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["session"]["skipped_done"] >= done_before  # what was done before the outage was not redone
