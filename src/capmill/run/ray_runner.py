"""The Ray Data runner (`--runner ray [--address A]`): the local runner's rules, with reading and models on a cluster.

Flow: the driver lists the inputs with capmill's sources (so ids, order and per-input errors are the local
runner's), skipping ids the ledger has; a Ray Dataset of those items is read (bytes fetched and hashed) by
Ray Data map tasks, then captioned by a pool of actors (one per GPU, or N CPU actors), each holding one
Captioner; records stream back to the driver, the only writer, which puts them in the same RunFolder as
the local runner (shards renamed when complete, then the ledger). Identical images are captioned once:
actors claim content hashes at a small registry actor preloaded with the ledger's keys, and the driver
gives every copy its record. See docs/scale-out.md.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from capmill.errors import ConfigError, MissingDependencyError
from capmill.records import Item, Record
from capmill.run.emitter import RecordEmitter, unfinished  # the local runner's, so both runners write the same records
from capmill.run.ray_tasks import CaptionWorker, item_schema, read_batch, registry_class, row_of
from capmill.run.stats import Stats


class RayOptions(BaseModel):
    """Knobs of the Ray runner (CaptionJob.runner_options)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None  # None: a cluster already joined by this process, else a new local one
    actors: int | None = Field(None, ge=1)  # None: one per GPU, else one per CPU but one (left to the readers)
    actor_cpus: float | None = Field(None, gt=0)  # CPUs each actor claims (default 1)
    actor_gpus: float | None = Field(None, ge=0)  # GPUs each actor claims (default 1 when the cluster has GPUs)
    read_cpus: float = Field(0.5, gt=0)  # CPUs per read task: fractional so reads always find room
    block_rows: int = Field(64, ge=1)  # items per block of the input dataset


class RayRunner:
    """Runs a CaptionJob on Ray; returns the summary (also written to `<run_dir>/summary.json`)."""

    name = "ray"

    def __init__(self, job: Any):
        self.job = job
        self.options = RayOptions.model_validate(getattr(job, "runner_options", None) or {})

    def run(self) -> dict[str, Any]:
        from capmill.data.sources import open_sources
        from capmill.run.progress import Progress
        from capmill.run.runfolder import RunFolder
        from capmill.run.summary import build_summary, write_summary

        job = self.job
        ray = _import_ray()
        source = open_sources(job.inputs, job.source)  # bad inputs fail before any cluster work
        stats = Stats()
        start = time.perf_counter()
        captioner = job.make_captioner()  # the driver's copy: settings and error records, never weights
        out = None
        progress = Progress(rich=None) if job.progress is not False else None
        completed, failure = False, None
        try:
            config = dict(captioner.settings())
            config.setdefault("mode", job.pipeline.mode or getattr(captioner, "mode", None))
            out = RunFolder(
                job.run_dir, config, fmt=job.fmt, shard_size=job.shard_size, sources=source.describe(),
                sidecar=job.sidecar,
            )  # fmt: skip
            writer = _Writer(captioner, out, stats, progress.update if progress else None)
            rows = writer.list_items(source)
            stats.total = stats.seen
            if rows:
                started_here = _connect(ray, self.options.address)
                try:
                    stats.times["load"] = time.perf_counter() - start
                    self._caption(ray, rows, out, writer)
                finally:
                    if started_here:
                        ray.shutdown()
            writer.finish()
            out.commit()
            out.close()
            if job.out_file:
                out.export_single_file(job.out_file)
            completed = True
        except BaseException as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if out is not None:
                out.commit()  # what was handed to the run folder is complete: keep it
            raise
        finally:
            if progress and out is not None:
                progress.close(stats)
            summary = build_summary(stats, out, completed, failure)
            summary["session"]["runner"] = "ray"
            if out is not None:
                write_summary(os.path.join(job.run_dir, "summary.json"), summary)
                out.release()
        return summary

    def _caption(self, ray: Any, rows: list[dict[str, Any]], out: Any, writer: _Writer) -> None:
        import pyarrow as pa

        job, opts = self.job, self.options
        actors, actor_cpus, actor_gpus = _pool_shape(ray.cluster_resources(), opts)
        registry = registry_class(ray).remote(_done_hashes(out))
        batch = max(1, job.pipeline.batch_size)
        blocks = max(1, -(-len(rows) // opts.block_rows))
        table = pa.Table.from_pylist(rows, schema=item_schema())
        size = -(-len(rows) // blocks)
        ds = ray.data.from_arrow([table.slice(k, size) for k in range(0, len(rows), size)])
        ds = ds.map_batches(
            read_batch,
            fn_kwargs={"fetch": job.pipeline.fetch},
            batch_format="pyarrow",
            batch_size=opts.block_rows,
            num_cpus=opts.read_cpus,
        )
        ds = ds.map_batches(
            CaptionWorker,
            fn_constructor_kwargs={
                "make_captioner": job.make_captioner,
                "mode": job.pipeline.mode,
                "decode": job.pipeline.decode,
                "fetch": job.pipeline.fetch,
                "registry": registry,
                "wants_media": out.wants_media,
                "threads": max(1, int(actor_cpus)),
            },
            batch_format="pyarrow",
            batch_size=batch,
            concurrency=actors,
            num_cpus=actor_cpus,
            num_gpus=actor_gpus,
        )
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in block.to_pylist():
                writer.take(row)


class _Writer:
    """The driver side: lists inputs, writes every record once, gives copies their original's record."""

    def __init__(self, captioner: Any, out: Any, stats: Stats, on_progress: Any):
        self.captioner, self.out, self.stats = captioner, out, stats
        self.on_progress = on_progress or (lambda stats: None)
        self.items: dict[int, Item] = {}  # listed items by row number, until their record is written
        self.emitter = RecordEmitter(out, stats, self.on_progress, max(256, out.shard_size + 1))

    def list_items(self, source: Any) -> list[dict[str, Any]]:
        """Rows for the dataset; what is done is skipped and inputs the source could not read are written now."""
        from capmill.run.workers import item_error

        rows: list[dict[str, Any]] = []
        for item in unfinished(source, self.out, self.stats):
            error = item_error(item)
            if error is not None:
                self.emitter.emit(item, self.captioner.error_record(item, str(error)), error.reason or "error")
                continue
            i = len(self.items)
            self.items[i] = item
            rows.append(row_of(i, item))
        return rows

    def take(self, row: dict[str, Any]) -> None:
        """One row back from the actors: a record to write, or a copy of another input's record."""
        item = self.items.pop(row["i"])
        item.meta = json.loads(row["meta"]) if row["meta"] else {}
        if row["hash"]:
            item._hash = row["hash"]
        if row["kind"] == "copy":
            self.stats.duplicates += 1
            self.emitter.copy(item)
            return
        record = Record.from_dict(json.loads(row["record"]))
        if row["kind"] == "generated":
            tokens = record.tokens or {}
            with self.stats.lock:
                self.stats.captioned += 1
                self.stats.prompt_tokens += int(tokens.get("prompt", 0))
                self.stats.completion_tokens += int(tokens.get("completion", 0))
            for stage, seconds in json.loads(row["times"] or "{}").items():
                self.stats.add_time(stage, seconds)
        self.emitter.emit(item, record, row["reason"], row["media"])
        if row["hash"] and row["original"]:
            self.emitter.remember(row["hash"], record)

    def finish(self) -> None:
        if self.items:
            raise RuntimeError(f"{len(self.items)} inputs came back from the cluster without a record")
        self.emitter.check_done()


def _pool_shape(resources: dict[str, float], opts: RayOptions) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor): one actor per GPU, or one per CPU leaving one for the readers."""
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    actor_gpus = opts.actor_gpus if opts.actor_gpus is not None else (1.0 if gpus else 0.0)
    actor_cpus = opts.actor_cpus if opts.actor_cpus is not None else 1.0
    if opts.actors is not None:
        actors = opts.actors
    elif actor_gpus:
        actors = max(1, int(gpus / actor_gpus))
    else:
        actors = max(1, int((cpus - opts.read_cpus) / actor_cpus))
    if actors * actor_cpus + opts.read_cpus > cpus:
        raise ConfigError(
            f"{actors} actor(s) x {actor_cpus} CPU leave no room for the read tasks ({opts.read_cpus} CPU) on a "
            f"cluster of {cpus:g} CPUs: Ray would wait forever; ask for fewer actors or fewer CPUs per actor"
        )
    if actor_gpus and actors * actor_gpus > gpus:
        raise ConfigError(f"{actors} actor(s) x {actor_gpus} GPU asked for, but the cluster has {gpus} GPU(s)")
    return actors, actor_cpus, actor_gpus


def _done_hashes(out: Any) -> list[str]:
    """Content hashes with a usable (non-error) record in the ledger: their copies need no model."""
    suffix = f":{out.settings_hash}"
    db = sqlite3.connect(f"file:{out.ledger.path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT DISTINCT key FROM items WHERE status != 'error'").fetchall()
    finally:
        db.close()
    return [key[: -len(suffix)] for (key,) in rows if key.endswith(suffix)]


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` (or the cluster this process is already in, or a new local one); True if started here."""
    if ray.is_initialized():
        return False
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private in-process cluster: no token needed
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    return True


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("ray[data]", "ray", "the Ray runner") from exc
    return ray
