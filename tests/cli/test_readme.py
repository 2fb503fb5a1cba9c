"""The README's "Try it without a GPU or a hub" block, run as written (tiny random-weight models, offline)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def try_it_section() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Try it without a GPU or a hub\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return section, block


def test_the_section_says_the_weights_are_random():
    section, block = try_it_section()
    assert "**Its weights are random: its captions are nonsense.**" in section
    assert block.count("RANDOM WEIGHTS") == 2


@pytest.mark.slow
def test_the_try_it_block_runs_as_written(tmp_path):
    _, block = try_it_section()
    (tmp_path / "tests" / "data").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "coco").symlink_to(ROOT / "tests" / "data" / "coco")
    bin_dir = tmp_path / "bin"  # `capmill` and `python` of this tree and interpreter, whatever is installed
    bin_dir.mkdir()
    for name, command in (("capmill", f'{sys.executable} -m capmill "$@"'), ("python", f'{sys.executable} "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
    }
    script = "set -euo pipefail\n" + block
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["run"]["records"] == 12 and summary["run"]["by_status"] == {"ok": 12}
    assert summary["session"]["captioned"] == 0 and summary["session"]["skipped_done"] == 12  # the Python resume
    assert "'captioned': 0" in done.stdout
    structured = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(structured) == 12 and {r["status"] for r in structured} == {"ok"}  # constrained: every one parses
    assert all(r["structured"] is not None for r in structured)
    text_mode = [json.loads(line) for line in (tmp_path / "structured.jsonl").read_text().splitlines()]
    assert len(text_mode) == 2 and {r["mode"] for r in text_mode} == {"text"}
    assert "Generate a detailed caption for this image." in done.stdout  # --show-prompt
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics and (tmp_path / "report" / "index.html").exists()
    assert "captioned nothing" not in done.stderr and "Traceback" not in done.stderr


def test_every_flag_in_the_readme_commands_exists():
    """Each `capmill COMMAND ... --flag` line in the README's code blocks names a command and flags its parser has."""
    import re

    from capmill.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    checked = 0
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            for part in re.split(r"&&|\|", line):
                words = part.split()
                if "capmill" not in words or words.index("capmill") + 1 >= len(words):
                    continue
                name = words[words.index("capmill") + 1]
                if name.startswith("-"):
                    continue
                assert name in commands, f"README: `capmill {name}` is no command"
                known = set(commands[name]._option_string_actions)
                for flag in (w.split("=", 1)[0] for w in words if w.startswith("--")):
                    assert flag in known, f"README: `capmill {name}` has no {flag}"
                    checked += 1
    assert checked > 30
