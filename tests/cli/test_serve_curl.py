"""The curl examples of docs/serve.md, run as written against a real `capmill serve` on 127.0.0.1, on real photos
large enough that an image in a command-line argument would fail ("Argument list too long")."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "serve.md"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")


def doc_curl_commands() -> list[str]:
    """The shell commands of the bash block in docs/serve.md that calls /v1/captions, continuation lines joined."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "curl" in b and "/v1/captions" in b]
    commands, current = [], ""
    for line in block.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.strip() + " "
        if not line.rstrip().endswith("|") and not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.fixture(scope="module")
def server(tiny_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = str(tiny_model("qwen2_vl"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "capmill", "serve", "--model", model, "--profile", "inkscope-2b"]
    cmd += ["--port", str(port), "--max-new-tokens", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capmill serve did not start: {proc.stdout.read().decode(errors='replace')}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_docs_show_both_forms():
    commands = doc_curl_commands()
    assert len(commands) == 2
    assert commands[0].startswith("curl -F file=@photo.jpg") and "--data-binary @-" in commands[1]


@pytest.mark.parametrize("size_rank", [0, 2])  # the largest COCO test photo (355 KB) and the third (201 KB)
def test_the_curl_examples_caption_real_photos(server, coco_photos, tmp_path, size_rank):
    photo = sorted(coco_photos, key=lambda p: p.stat().st_size, reverse=True)[size_rank]
    assert photo.stat().st_size > 150_000
    shutil.copy(photo, tmp_path / "photo.jpg")
    for command in doc_curl_commands():
        command = command.replace("http://localhost:8000", server).replace("curl ", "curl -sS --fail-with-body ")
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stderr}\n{done.stdout}"
        record = json.loads(done.stdout)
        assert record["status"] == "ok" and record["caption"], record
        assert record["profile"] == "inkscope-2b"


def test_an_image_in_an_argument_is_what_fails(coco_photos, tmp_path):
    """Why the JSON example reads stdin: the same body as one argument is refused by the operating system."""
    photo = max(coco_photos, key=lambda p: p.stat().st_size)
    shutil.copy(photo, tmp_path / "photo.jpg")
    command = 'curl -s -d "{\\"image\\": \\"$(base64 -w0 photo.jpg)\\"}" http://127.0.0.1:9/v1/captions'
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Argument list too long" in done.stderr
