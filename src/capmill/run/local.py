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
from capmill.errors import ErrorRateError, RunInterrupted
from capmill.run.identity import library_versions
from capmill.run.pipeline import CaptionerLike, Pipeline, PipelineOptions
from capmill.run.progress import Progress
from capmill.run.runfolder import RunFolder
from capmill.run.stats import Stats
from capmill.run.stopping import interrupted_message, stop_on_signals
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
    retry_errors: bool = False  # redo every error record, final ones too (retryable ones are always redone)
    max_error_rate: float | None = None  # a finished run with more errors than this fraction fails (exit 4)
    commit_seconds: float = 30.0  # the open shard is committed at least this often


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
        completed, failure, verdict = False, None, None
        try:
            with stop_on_signals():
                out, options = open_run_folder(captioner, job, source)
                announce(out, progress)
                stats.times["load"] = time.perf_counter() - start  # the pipeline adds the weights' load
                threading.Thread(target=_count, args=(source, stats), daemon=True).start()
                pipeline = Pipeline(
                    captioner, source, out, options, stats=stats, on_progress=progress.update if progress else None
                )
                pipeline.run()
                if job.out_file:
                    out.export_single_file(job.out_file)
                completed = True
                verdict = error_rate_verdict(out, job.max_error_rate)
        except KeyboardInterrupt as exc:
            failure = f"{type(exc).__name__}"
            raise _interrupted(exc, job, stats, out) from None
        except BaseException as exc:
            failure = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if progress and out is not None:
                progress.close(stats)
            summary = build_summary(stats, out, completed, failure)
            summary["session"]["fast_paths"] = captioner.fast_paths() if hasattr(captioner, "fast_paths") else {}
            if verdict:
                summary["failed"] = verdict
            if out is not None:
                write_summary(os.path.join(job.run_dir, "summary.json"), summary)
                out.release()
            close = getattr(captioner, "close", None)
            if close:
                close()
        if verdict:
            raise ErrorRateError(verdict)
        return summary


def open_run_folder(captioner: Any, job: CaptionJob, source: Any) -> tuple[RunFolder, PipelineOptions]:
    """The run folder of a job and its pipeline options: one configuration for every runner (local, Ray)."""
    config, options = run_config(captioner, job)
    out = RunFolder(
        job.run_dir,
        config,
        fmt=job.fmt,
        shard_size=job.shard_size,
        sources=source.describe(),
        sidecar=job.sidecar,
        retry_errors=job.retry_errors,
        commit_seconds=job.commit_seconds,
        versions=library_versions(),
    )
    return out, options


def announce(out: RunFolder, progress: Any) -> None:
    """Print what the run folder wants the user to know (a library version changed since the last session)."""
    if out.notices:
        import sys

        for notice in out.notices:
            print(f"capmill: warning: {notice}", file=sys.stderr, flush=True)


def error_rate_verdict(out: RunFolder, limit: float | None) -> str | None:
    """Why a finished run fails --max-error-rate (None: it does not); over the whole run, from the ledger."""
    if limit is None:
        return None
    records = out.ledger.count()
    errors = out.ledger.by_status().get("error", 0)
    rate = errors / records if records else 0.0
    if rate <= limit:
        return None
    return (
        f"error rate {rate:.3f} ({errors} of {records} records) is above --max-error-rate {limit:g}; "
        f"errors by reason: {out.ledger.errors_by_reason()}"
    )


def _interrupted(exc: BaseException, job: CaptionJob, stats: Stats, out: RunFolder | None) -> RunInterrupted:
    message, code = interrupted_message(exc, job.run_dir, stats.written, out.ledger.count() if out else None)
    return RunInterrupted(message, code)


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
