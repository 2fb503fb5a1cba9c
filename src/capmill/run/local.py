"""The local runner: one process, one captioner, the streaming pipeline into one run folder."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capmill.data.runfolder import RunFolder
from capmill.data.sources import SourceOptions, open_sources
from capmill.run.pipeline import CaptionerLike, Pipeline, PipelineOptions
from capmill.run.progress import Progress
from capmill.run.stats import Stats
from capmill.run.summary import build_summary, write_summary


@dataclass
class CaptionJob:
    """Everything a runner needs; runners build the captioner themselves (Ray builds one per worker)."""

    inputs: list[str]
    make_captioner: Callable[[], Any]
    run_dir: str
    fmt: str = "jsonl"
    shard_size: int = 1000
    source: SourceOptions = field(default_factory=SourceOptions)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    out_file: str | None = None  # join the shards into this one file at the end
    sidecar: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None  # None: rich on a terminal, log lines otherwise; False: silent
    runner_options: dict[str, Any] = field(default_factory=dict)  # knobs of a non-local runner (e.g. Ray's address)


class LocalRunner:
    """Runs a CaptionJob here; returns the summary (also written to `<run_dir>/summary.json`)."""

    name = "local"

    def __init__(self, job: CaptionJob):
        self.job = job

    def run(self) -> dict[str, Any]:
        job = self.job
        source = open_sources(job.inputs, job.source)  # bad inputs fail before the model loads
        stats = Stats()
        start = time.perf_counter()
        captioner: CaptionerLike = job.make_captioner()
        out: RunFolder | None = None
        progress = Progress(rich=None) if job.progress is not False else None
        completed, failure = False, None
        try:
            config = dict(captioner.settings())  # type: ignore[attr-defined]
            config.setdefault("mode", job.pipeline.mode or getattr(captioner, "mode", None))
            out = RunFolder(
                job.run_dir,
                config,
                fmt=job.fmt,
                shard_size=job.shard_size,
                sources=source.describe(),
                sidecar=job.sidecar,
            )
            stats.times["load"] = time.perf_counter() - start  # the pipeline adds the weights' load
            threading.Thread(target=_count, args=(source, stats), daemon=True).start()
            pipeline = Pipeline(
                captioner, source, out, job.pipeline, stats=stats, on_progress=progress.update if progress else None
            )
            pipeline.run()
            if job.out_file:
                out.export_single_file(job.out_file)
            completed = True
        except BaseException as exc:
            failure = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if progress and out is not None:
                progress.close(stats)
            summary = build_summary(stats, out, completed, failure)
            if out is not None:
                write_summary(os.path.join(job.run_dir, "summary.json"), summary)
                out.release()
            close = getattr(captioner, "close", None)
            if close:
                close()
        return summary


def _count(source: Any, stats: Stats) -> None:
    try:
        stats.total = source.count()
    except Exception:  # noqa: BLE001 - counting is only for the ETA
        stats.total = None
