"""Progress: a rich live display on a terminal (tmux included), plain log lines otherwise (files, CI, pipes).

Both show images done (of the total, when the sources can count it), images/s, tokens/s, errors and the ETA.
A plain line is printed after every engine batch (at most one a second) and at least every `interval` seconds.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from capmill.run.stats import Stats
from capmill.run.summary import rates


def describe(stats: Stats) -> dict[str, Any]:
    r = rates(stats)
    done = stats.written + stats.skipped_done
    remaining = None if stats.total is None else max(stats.total - done, 0)
    eta = remaining / r["images_per_s"] if remaining is not None and r["images_per_s"] > 0 else None
    return {"done": done, "total": stats.total, "errors": stats.errors, "eta": eta, **r}


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def line(stats: Stats) -> str:
    d = describe(stats)
    total = "?" if d["total"] is None else d["total"]
    return (
        f"capmill: {d['done']}/{total} done ({stats.skipped_done} resumed, {d['errors']} errors) "
        f"{d['images_per_s']:.2f} img/s {d['tokens_per_s']:.1f} tok/s ETA {_eta(d['eta'])} "
        f"[{stats.phase}, {stats.batches} engine calls]"
    )


class Progress:
    """Call `update(stats)` as often as you like; output is rate-limited. `close()` prints the final state."""

    def __init__(
        self, stream: TextIO | None = None, *, rich: bool | None = None, interval: float = 10.0, min_gap: float = 1.0
    ):
        self.stream = stream or sys.stderr
        self.rich = self.stream.isatty() if rich is None else rich
        self.interval, self.min_gap = interval, min_gap
        self._last = 0.0
        self._last_batches = -1
        self._last_phase = ""
        self._lock = threading.Lock()
        self._live: Any = None
        self._task: Any = None

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._live = Progress(
            SpinnerColumn(),  # the display moves while the model works on a batch
            TextColumn("[bold]capmill[/] {task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TextColumn("[red]{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
            refresh_per_second=4,
        )
        self._live.start()
        self._task = self._live.add_task("caption", total=None, speed="", errors=0, phase="")

    def update(self, stats: Stats, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if self.rich:
                if self._live is None:
                    self._start_rich()
                if force or now - self._last >= 0.2 or stats.phase != self._last_phase:
                    self._last, self._last_phase = now, stats.phase
                    d = describe(stats)
                    speed = f"{d['images_per_s']:.2f} img/s {d['tokens_per_s']:.1f} tok/s"
                    self._live.update(
                        self._task,
                        completed=d["done"],
                        total=d["total"],
                        speed=speed,
                        errors=d["errors"],
                        phase=stats.phase,
                    )
                return
            moved = stats.batches != self._last_batches or stats.phase != self._last_phase
            if force or now - self._last >= self.interval or (moved and now - self._last >= self.min_gap):
                self._last, self._last_batches, self._last_phase = now, stats.batches, stats.phase
                print(line(stats), file=self.stream, flush=True)

    def close(self, stats: Stats) -> None:
        self.update(stats, force=True)
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
