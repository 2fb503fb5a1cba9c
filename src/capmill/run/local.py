"""The local runner: one process, one captioner, the streaming pipeline into one run folder."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capmill.data.sources import SourceOptions, open_sources
from capmill.run.pipeline import CaptionerLike, Pipeline, PipelineOptions
from capmill.run.progress import Progress
from capmill.run.runfolder import RunFolder
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
            config, options = run_config(captioner, job)
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
                captioner, source, out, options, stats=stats, on_progress=progress.update if progress else None
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
            summary["session"]["fast_paths"] = captioner.fast_paths() if hasattr(captioner, "fast_paths") else {}
            if out is not None:
                write_summary(os.path.join(job.run_dir, "summary.json"), summary)
                out.release()
            close = getattr(captioner, "close", None)
            if close:
                close()
        return summary


def run_config(captioner: Any, job: CaptionJob) -> tuple[dict[str, Any], PipelineOptions]:
    """The run folder's configuration and the pipeline options, with a profile's own image downscaling.

    A profile may allow downscaling large photos before the model sees them (`extra["max_image_side"]`, and
    `extra["jpeg_draft"]`); none of the seed profiles does, since it changes pixels. Any downscaling changes
    captions, so it becomes part of the configuration a resumed run must match.
    """
    config = dict(captioner.settings())
    config.setdefault("mode", job.pipeline.mode or getattr(captioner, "mode", None))
    options, decode = job.pipeline, job.pipeline.decode
    extra = getattr(getattr(captioner, "profile", None), "extra", None) or {}
    if decode.resize_max_side is None and extra.get("max_image_side"):
        decode = dataclasses.replace(
            decode, resize_max_side=int(extra["max_image_side"]), draft=bool(extra.get("jpeg_draft", False))
        )
        options = dataclasses.replace(options, decode=decode)
    if decode.resize_max_side:
        config["image_resize"] = {"max_side": decode.resize_max_side, "draft": decode.draft}
    return config, options


def _count(source: Any, stats: Stats) -> None:
    try:
        stats.total = source.count()
    except Exception:  # noqa: BLE001 - counting is only for the ETA
        stats.total = None
