"""The Ray Data runner (`--runner ray [--address A]`): the local runner's rules, with reading and models on a cluster.

Flow: the driver lists the inputs with capmill's sources (so ids, order and per-input errors are the local
runner's), skipping ids the ledger holds as done, into Parquet files on disk (`.listing/` in the run folder,
removed at the end), so the listing streams to the cluster and the driver keeps nothing per input; Ray Data
reads them (bytes fetched and hashed in map tasks), then a pool of actors (one per GPU, or N CPU actors),
each holding one Captioner, captions them; records stream back to the driver, the only writer, which puts
them in the same RunFolder as the local runner (shards renamed when complete, then the ledger). The run
configuration and image options come from the local runner's `open_run_folder`, so both runners give the
same key and the same pixels. Identical images are captioned once: actors claim content hashes at a registry
actor on the driver's node, which looks them up in the ledger and keeps its claims in SQLite on disk; the
driver gives every copy its record. See docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from capmill.errors import ConfigError, EngineUnavailableError, MissingDependencyError
from capmill.records import Item, Record
from capmill.run.emitter import RecordEmitter, error_record, unfinished  # the local runner's: the same records
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
    listing_rows: int = Field(4096, ge=1)  # items per listing file written by the driver


class RayRunner:
    """Runs a CaptionJob on Ray; returns the summary (also written to `<run_dir>/summary.json`)."""

    name = "ray"
    in_process = False  # models live in actors: a recipe cannot run its stages side by side in this process
    _held = 0  # open sessions (see `session`)
    _cluster_to_stop = False  # a session keeps a local cluster one of its runs started

    def __init__(self, job: Any):
        self.job = job
        self.options = RayOptions.model_validate(getattr(job, "runner_options", None) or {})

    def run(self) -> dict[str, Any]:
        from capmill.data.sources import open_sources
        from capmill.errors import ErrorRateError
        from capmill.run.local import announce, error_rate_verdict, open_run_folder
        from capmill.run.progress import Progress
        from capmill.run.summary import build_summary, write_summary

        job = self.job
        ray = _import_ray()
        source = open_sources(job.inputs, job.source)  # bad inputs fail before any cluster work
        stats = Stats()
        start = time.perf_counter()
        captioner = job.make_captioner()  # the driver's copy: settings and error records, never weights
        out = None
        progress = Progress(rich=None) if job.progress is not False else None
        completed, failure, verdict = False, None, None
        listing = os.path.join(job.run_dir, ".listing")
        try:
            out, options = open_run_folder(captioner, job, source)  # the local runner's configuration
            announce(out, progress)
            writer = _Writer(captioner, out, stats, progress.update if progress else None)
            writer.max_failures = getattr(job.pipeline, "max_consecutive_failures", 0)
            shutil.rmtree(listing, ignore_errors=True)
            listed = writer.list_items(source, listing, self.options.listing_rows)
            stats.total = stats.seen
            if listed:
                started_here = _connect(ray, self.options.address)
                try:
                    stats.times["load"] = time.perf_counter() - start
                    stats.phase = "captioning"
                    self._caption(ray, listing, out, writer, options)
                finally:
                    if started_here and RayRunner._held:
                        RayRunner._cluster_to_stop = True  # the next run of the session joins it
                    elif started_here:
                        ray.shutdown()
            writer.finish()
            out.commit()
            out.close()
            if job.out_file:
                out.export_single_file(job.out_file)
            completed = True
            verdict = error_rate_verdict(out, getattr(job, "max_error_rate", None))
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
            if verdict:
                summary["failed"] = verdict
            if out is not None:
                write_summary(os.path.join(job.run_dir, "summary.json"), summary)
                out.release()
            shutil.rmtree(listing, ignore_errors=True)
        if verdict:
            raise ErrorRateError(verdict)
        return summary

    @staticmethod
    @contextlib.contextmanager
    def session() -> Iterator[None]:
        """Runs one after another (a recipe's stages) share one cluster: a local cluster the first run with work
        starts stays up until the session ends (a run with nothing to do still starts none)."""
        RayRunner._held += 1
        try:
            yield
        finally:
            RayRunner._held -= 1
            if not RayRunner._held and RayRunner._cluster_to_stop:
                RayRunner._cluster_to_stop = False
                _import_ray().shutdown()

    def _caption(self, ray: Any, listing: str, out: Any, writer: _Writer, options: Any) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        job, opts = self.job, self.options
        actors, actor_cpus, actor_gpus = _pool_shape(ray.cluster_resources(), opts)
        # on the driver's node, where the ledger is: it answers "done before?" from there
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        registry = registry_class(ray).options(scheduling_strategy=here).remote(out.ledger.path, out.settings_hash)
        batch = max(1, job.pipeline.batch_size)
        ds = ray.data.read_parquet(listing, schema=item_schema())
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
                "mode": options.mode,
                "decode": options.decode,  # with a profile's own downscaling, as the local runner's
                "fetch": options.fetch,
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
        self.listed = self.returned = 0
        self.max_failures, self.failures = 0, 0  # the circuit breaker, as the local pipeline's
        self.emitter = RecordEmitter(out, stats, self.on_progress, max(256, out.shard_size + 1))

    def list_items(self, source: Any, folder: str, rows_per_file: int) -> int:
        """Parquet files of rows for the dataset (memory: one file's rows); what is done is skipped, and inputs
        the source could not read are written now. Returns how many rows were listed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from capmill.run.workers import item_error

        os.makedirs(folder, exist_ok=True)
        rows: list[dict[str, Any]] = []
        files = 0

        def flush() -> None:
            nonlocal rows, files
            if rows:
                pq.write_table(
                    pa.Table.from_pylist(rows, schema=item_schema()), os.path.join(folder, f"{files:06d}.parquet")
                )
                files += 1
                rows = []

        for item in unfinished(source, self.out, self.stats):
            error = item_error(item)
            if error is not None:
                self.emitter.emit(item, error_record(self.captioner, item, error), error.reason or "error")
                continue
            rows.append(row_of(self.listed, item))
            self.listed += 1
            if len(rows) >= rows_per_file:
                flush()
        flush()
        return self.listed

    def take(self, row: dict[str, Any]) -> None:
        """One row back from the actors: a record to write, or a copy of another input's record."""
        self.returned += 1
        item = Item(id=row["id"], source=row["source"], kind=row["item_kind"])
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
        if row["kind"] == "generated":
            self._check_failures(record)

    def _check_failures(self, record: Record) -> None:
        """Stop after `max_failures` retryable engine failures in a row (a server down, out of memory)."""
        if record.status != "error":
            self.failures = 0
            return
        if record.error_kind != "retryable":
            return
        self.failures += 1
        if self.max_failures and self.failures >= self.max_failures:
            raise EngineUnavailableError(
                f"stopped after {self.failures} engine failures in a row (last: {record.error}); every finished "
                "record is saved, and the failed inputs are marked retryable: fix the engine and run the same "
                "command again to resume"
            )

    def finish(self) -> None:
        if self.returned != self.listed:
            raise RuntimeError(f"{self.listed - self.returned} inputs came back from the cluster without a record")
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
