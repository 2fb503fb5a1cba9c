"""Progress that moves: plain log lines after every engine batch when not on a terminal, through a real run."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from make_inputs import jpeg  # noqa: E402
from run_scripted import ScriptedEngine, captioner, model_dir  # noqa: E402

from capmill.data.sources import open_sources  # noqa: E402
from capmill.run.pipeline import Pipeline, PipelineOptions  # noqa: E402
from capmill.run.progress import Progress  # noqa: E402
from capmill.run.runfolder import RunFolder  # noqa: E402
from capmill.run.stats import Stats  # noqa: E402

LINE = re.compile(
    r"^capmill: (\d+)/(\d+|\?) done \((\d+) resumed, (\d+) errors\) ([\d.]+) img/s ([\d.]+) tok/s ETA (\S+) "
    r"\[(.+), (\d+) engine calls\]$"
)


def test_plain_lines_after_every_batch(tmp_path):
    ScriptedEngine.reset()
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg((i * 20, 9, 9)))
    (folder / "zz.jpg").write_bytes(b"")  # an error, counted
    cap = captioner(model_dir(tmp_path / "m"))
    out = RunFolder(str(tmp_path / "run"), cap.settings())
    stream = io.StringIO()
    progress = Progress(stream, rich=False, min_gap=0)  # not a terminal: plain lines
    stats = Stats(total=13)
    options = PipelineOptions(batch_size=2, group_batches=1, workers=0)
    Pipeline(cap, open_sources([str(folder)]), out, options, stats=stats, on_progress=progress.update).run()
    progress.close(stats)
    out.release()
    lines = stream.getvalue().splitlines()
    parsed = [LINE.match(text) for text in lines]
    assert all(parsed), [t for t, m in zip(lines, parsed, strict=True) if not m]
    done = [int(m.group(1)) for m in parsed]
    batches = [int(m.group(9)) for m in parsed]
    assert done == sorted(done) and done[-1] == 13 and parsed[-1].group(4) == "1"
    assert batches[-1] == 6 and len(set(batches)) >= 6  # a line for every one of the 6 batches of 2
    assert {m.group(8) for m in parsed} >= {"captioning"}
    assert parsed[-1].group(7) == "0m00s"  # nothing left
    assert float(parsed[-1].group(6)) > 0  # tokens/s


def test_rich_display_moves_on_a_terminal(tmp_path):
    """`capmill caption` with its stderr on a pseudo-terminal (as in a terminal or tmux): the rich display is drawn
    and redrawn while the run goes, with the phase, done counts, speeds and errors."""
    import os
    import pty
    import subprocess

    from run_scripted import cli_command

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(24):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg((i * 10, 9, 9)))
    command = cli_command(
        sys.executable, "caption", str(folder), "--model", str(model_dir(tmp_path / "m")), "--profile", "inkscope-2b",
        "--engine", "scripted-test", "--run-dir", str(tmp_path / "run"), "--batch-size", "2", "--workers", "0",
    )  # fmt: skip
    main, secondary = pty.openpty()
    env = {**os.environ, "CAPMILL_SCRIPTED_DELAY": "0.1", "COLUMNS": "160", "TERM": "xterm-256color"}
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the other side closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(main)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in screen  # drawn with terminal control sequences, not plain lines
    assert "capmill" in screen and "captioning" in screen and "img/s" in screen and "errors" in screen
    counts = set(re.findall(r"(\d+)/24", screen))
    assert len(counts) >= 3 and "24" in counts, counts  # redrawn as the run went: several done counts
