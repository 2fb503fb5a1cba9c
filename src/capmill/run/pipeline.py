"""The streaming pipeline: sources -> decode workers -> batches -> engine -> parse -> run folder, bounded throughout.

Longer than most modules (~350 lines): the four threads share its queues, counters and stop flag, and splitting
them apart would pass that state through every call; the ledger, emitter, workers and stopping live beside it.

Four threads and a process pool keep the model busy: a feeder reads the sources and submits fetch+decode jobs to
worker processes; a batcher takes decoded items in order, deduplicates by content, calls `Captioner.prepare` and
forms batches; the calling thread only runs `Captioner.generate`; a writer calls `Captioner.finish` and hands
records to the run folder. Every queue is bounded, so memory does not grow with the number of inputs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Executor, Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from capmill.data.fetch import FetchOptions
from capmill.data.images import DecodeOptions
from capmill.engines.stop_point import NOT_RUN
from capmill.errors import EngineUnavailableError, InputError
from capmill.records import Generation, Item, Record, Request
from capmill.run.emitter import RecordEmitter, error_record, unfinished
from capmill.run.runfolder import RunFolder
from capmill.run.stats import Stats
from capmill.run.stopping import FinishInFlight
from capmill.run.workers import Loaded, done_future, load_and_prepare, make_pool

_END = object()
_ABORT = object()


class CaptionerLike(Protocol):
    """What the pipeline needs of `capmill.captioner.Captioner`."""

    def prepare(self, item: Item, mode: str) -> Request: ...
    def generate(self, requests: list[Request]) -> list[Generation]: ...
    def finish(self, item: Item, request: Request, generation: Generation) -> Record: ...
    def error_record(self, item: Item, error: Exception) -> Record: ...


@dataclass
class PipelineOptions:
    mode: str | None = None  # None: the captioner's own mode
    batch_size: int = 8
    workers: int = 1  # fetch+decode processes; 0: decode here, in turns with the model (for a model on the CPU)
    prefetch: int | None = None  # decoded items held ahead of the model (default: 4 batches, at least 2x fetches)
    fetch_threads: int = 16  # concurrent URL downloads (0: in the decode workers, one at a time each)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    fetch: FetchOptions = field(default_factory=FetchOptions)
    group_batches: int = 8  # requests of this many batches go to the engine together (it groups them by length)
    recent_records: int = 256  # records kept for duplicates that arrive soon after their original
    max_consecutive_failures: int = 20  # retryable engine failures in a row that stop the run (0: never)


class _Stopped(Exception):
    pass


class Pipeline:
    """Runs one session over `source` into `out`; `run()` returns the session's Stats."""

    def __init__(
        self,
        captioner: CaptionerLike,
        source: Iterable[Item],
        out: RunFolder,
        options: PipelineOptions | None = None,
        *,
        stats: Stats | None = None,
        on_progress: Callable[[Stats], None] | None = None,
    ):
        self.captioner, self.source, self.out = captioner, source, out
        self.options = options or PipelineOptions()
        self.stats = stats or Stats()
        self.on_progress = on_progress or (lambda stats: None)
        prefetch = self.options.prefetch or max(8, 4 * self.options.batch_size, 2 * self.options.fetch_threads)
        self._loaded: queue.Queue = queue.Queue(maxsize=prefetch)
        self._batches: queue.Queue = queue.Queue(maxsize=1)  # one window ready while the engine runs another
        self._records: queue.Queue = queue.Queue(maxsize=16)  # messages: a generated window, or one input
        self._stop = threading.Event()  # everything stops
        self._in_flight = FinishInFlight()
        self._halt_inputs = threading.Event()  # reading and batching stop; the writer finishes what is generated
        self._errors: list[BaseException] = []
        # deduplication: keys sent to the model this session are claimed in the ledger's on-disk session index;
        # the emitter holds followers waiting for their original, and keeps every finished original of the open
        # (uncommitted) shard findable
        self._failures = 0  # retryable engine failures in a row (the circuit breaker)
        self.emitter = RecordEmitter(
            out, self.stats, self.on_progress, max(self.options.recent_records, out.shard_size + 1)
        )
        self._sent_batches = 0
        self._engine_loaded = False
        self._fetch_pool: Executor | None = None
        self._pool: Executor
        self._pool_lock = threading.Lock()
        self._retry_pool: Executor | None = None
        self._model_idle = threading.Event()  # workers=0: decoding waits for it, so it never competes with the model
        self._model_idle.set()
        preparer = getattr(captioner, "preparer", None)  # decode workers build Requests when the captioner says how
        self._builder = preparer() if callable(preparer) else None

    # -- plumbing --------------------------------------------------------------------------------------
    def _put(self, q: queue.Queue, value: Any, inputs: bool = False) -> None:
        while True:
            if self._stop.is_set() or (inputs and self._halt_inputs.is_set()):
                raise _Stopped
            try:
                q.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue, inputs: bool = False, idle: Callable[[], None] | None = None) -> Any:
        while True:
            if self._stop.is_set() or (inputs and self._halt_inputs.is_set()):
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if idle is not None:
                    idle()
                continue

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def body() -> None:
            try:
                target()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                self._errors.append(exc)
                self._stop.set()

        thread = threading.Thread(target=body, name=f"capmill-{name}", daemon=True)
        thread.start()
        return thread

    # -- stages ----------------------------------------------------------------------------------------
    def _job(self, item: Item) -> tuple[Any, ...]:
        """The decode job's arguments: with a captioner that can say how, the worker also builds the Request."""
        opts = self.options
        return item, opts.decode, opts.fetch, self._builder, opts.mode, self.out.wants_media

    def _submit(self, item: Item) -> Future:
        """Submit to the decode pool, replacing it if a worker died (killed for memory, or a decoder crash)."""
        with self._pool_lock:
            try:
                return self._pool.submit(load_and_prepare, *self._job(item))
            except BrokenExecutor:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = make_pool(self.options.workers)
                return self._pool.submit(load_and_prepare, *self._job(item))

    def _result(self, future: Future, item: Item) -> Loaded:
        """A decode job's result. If its worker died, the item is tried once more alone in a fresh process, so a
        file that kills its decoder becomes an error record and the items decoded beside it are not lost."""
        try:
            return future.result()
        except BrokenExecutor:
            pass
        # one worker, one job at a time: if it dies now, this item killed it
        if self._retry_pool is None:
            self._retry_pool = make_pool(1)
        try:
            return self._retry_pool.submit(load_and_prepare, *self._job(item)).result()
        except BrokenExecutor:
            self._retry_pool.shutdown(wait=False)
            self._retry_pool = None
            return Loaded(item, InputError(item.source, "decoder crashed", "its worker process died twice"))

    def _feed(self) -> None:
        """Read the sources, skip what is done, submit fetch+decode jobs (blocking when the queue is full)."""
        opts = self.options
        for item in unfinished(self.source, self.out, self.stats):
            needs_work = item.error is None and (item.kind != "text" or item.text is None)
            if not needs_work:
                future = done_future(item)
            elif "url" in item.meta and opts.fetch_threads > 0:
                future = self._url_pool().submit(load_and_prepare, *self._job(item))
            else:
                future = self._submit(item)
            self._put(self._loaded, (future, item), inputs=True)
        self._put(self._loaded, _END, inputs=True)

    def _url_pool(self) -> Executor:
        """Downloads wait on the network, not the CPU: many at once, in threads (decoding releases the GIL)."""
        if self._fetch_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._fetch_pool = ThreadPoolExecutor(self.options.fetch_threads, thread_name_prefix="capmill-fetch")
        return self._fetch_pool

    def _batch(self) -> None:
        """Decoded items in input order -> deduplicate -> prepare -> batches for the model."""
        batch: list[tuple[Item, Request]] = []
        while True:
            job = self._get(self._loaded, inputs=True)
            if job is _END:
                break
            self._take_turn()
            loaded = self._result(*job)
            item, error = loaded.item, loaded.error
            self.stats.add_time("read", loaded.seconds)
            if error is not None:
                self._put(self._records, ("error", item, error, False), inputs=True)
                continue
            key = item.content_hash
            full_key = self.out.key_for(key)
            if self.out.ledger.find_key(full_key) is not None or not self.out.ledger.claim(full_key):
                self.stats.duplicates += 1
                self._put(self._records, ("copy", item, None), inputs=True)
                continue
            self._take_turn()
            request, error, seconds = self._request(loaded)
            self.stats.add_time("preprocess", seconds)
            if error is not None:  # its duplicates, if any, wait for this record
                self._put(self._records, ("error", item, error, True), inputs=True)
                continue
            item.image = None  # the request holds what the model needs
            if not self.out.wants_media:
                item.data = None
            batch.append((item, request))
            # with worker processes the first batch goes at once (the model should start early; decoding in turns
            # with it gains nothing from that); then windows of group_batches batches
            rush = not self._sent_batches and self.options.workers > 0
            window = self.options.batch_size * (1 if rush else self.options.group_batches)
            if len(batch) >= window:
                self._flush(batch)
                batch = []
        self._flush(batch)
        self._put(self._batches, _END, inputs=True)

    def _take_turn(self) -> None:
        """With decoding in this process (workers=0), wait while the model generates."""
        if self.options.workers <= 0:
            while not self._model_idle.wait(0.1):
                if self._stop.is_set() or self._halt_inputs.is_set():
                    raise _Stopped

    def _request(self, loaded: Loaded) -> tuple[Request | None, InputError | None, float]:
        """The Request the worker built, or (text in hand, a captioner without a builder) one built here now."""
        if loaded.request is not None or loaded.prepare_error is not None:
            return loaded.request, loaded.prepare_error, loaded.prepare_seconds
        start = time.perf_counter()
        try:
            return self.captioner.prepare(loaded.item, self.options.mode), None, time.perf_counter() - start
        except InputError as exc:
            return None, exc, time.perf_counter() - start

    def _flush(self, pending: list[tuple[Item, Request]]) -> None:
        """Hand the engine the whole window, sorted by size: the engine cuts it into batches of similar token length
        itself (as `Captioner.caption` does), so a run batches exactly as the Python API does."""
        if pending:
            pending.sort(key=lambda pair: _request_size(pair[1]))
            self._put(self._batches, pending, inputs=True)
            self._sent_batches += 1

    def _generate(self) -> None:
        """The calling thread: keep the engine busy."""
        loaded = self._engine_loaded
        while True:
            start = time.perf_counter()
            batch = self._get(self._batches)
            self.stats.add_time("wait", time.perf_counter() - start)
            if batch is _END:
                break
            if not loaded:
                loaded = True
                self._load_engine()
            start = time.perf_counter()
            self._model_idle.clear()
            try:
                with self._in_flight.engine_call():  # a first Ctrl-C lets the batch in progress finish and be kept
                    generations = self.captioner.generate([request for _, request in batch])
            finally:
                self._model_idle.set()
            self.stats.add_time("engine", time.perf_counter() - start)
            if len(generations) != len(batch):
                raise RuntimeError(f"engine returned {len(generations)} generations for {len(batch)} requests")
            if any(g.finish_reason == NOT_RUN for g in generations):  # a stop was asked: these wait for a later run
                kept = [(pair, g) for pair, g in zip(batch, generations, strict=True) if g.finish_reason != NOT_RUN]
                batch, generations = [pair for pair, _ in kept], [g for _, g in kept]
            for generation in generations:
                self._account(generation)
            self._put(self._records, ("generated", batch, generations))
            self._in_flight.raise_if_asked()
            self._check_failures(generations)
        self._put(self._records, _END)

    def _check_failures(self, generations: list[Generation]) -> None:
        """The circuit breaker: stop after `max_consecutive_failures` retryable engine failures in a row, rather
        than turn the rest of the dataset into error records (a server down, a GPU out of memory)."""
        limit = self.options.max_consecutive_failures
        last = None
        for generation in generations:
            if generation.error and generation.retryable is not False:
                self._failures += 1
                last = generation.error
            elif not generation.error:
                self._failures = 0
        if limit and self._failures >= limit:
            raise EngineUnavailableError(
                f"stopped after {self._failures} engine failures in a row (last: {last}); every finished record is "
                "saved, and the failed inputs are marked retryable: fix the engine (is the server up? memory?) and "
                "run the same command again to resume"
            )

    def _load_engine(self) -> None:
        """Load the weights when the first batch is ready: a resumed run with nothing left loads nothing."""
        if isinstance(getattr(type(self.captioner), "engine", None), property):
            start = time.perf_counter()
            self.stats.phase = "loading model"
            self.on_progress(self.stats)
            _ = self.captioner.engine  # type: ignore[attr-defined]
            self.stats.add_time("load", time.perf_counter() - start)
        self.stats.phase = "captioning"
        self.on_progress(self.stats)

    def _account(self, generation: Generation) -> None:
        t = generation.timings
        with self.stats.lock:
            self.stats.prompt_tokens += generation.prompt_tokens
            self.stats.completion_tokens += generation.completion_tokens
            self.stats.captioned += 1
            for ours, theirs in (
                ("engine_preprocess", "preprocess"),
                ("prefill", "prefill"),
                ("generate", "generate"),
                ("engine_decode", "decode"),
            ):
                value = t.get(theirs)
                if isinstance(value, (int, float)):
                    self.stats.times[ours] += float(value)

    def _write(self) -> None:
        """Parse, copy records to duplicates, and hand everything to the run folder."""
        while True:
            message = self._get(self._records, idle=self.out.commit_if_due)  # waiting: commit on the time bound
            if message is _ABORT:
                return  # the model failed: what it produced is written; duplicates still waiting are redone later
            if message is _END:
                break
            kind = message[0]
            if kind == "generated":
                for (item, request), generation in zip(message[1], message[2], strict=True):
                    start = time.perf_counter()
                    record = self.captioner.finish(item, request, generation)
                    self.stats.add_time("parse", time.perf_counter() - start)
                    self.emitter.emit(item, record, _generation_reason(record, generation))
                    self.emitter.remember(item.content_hash, record)
                self.stats.batches += 1
                self.on_progress(self.stats)
            elif kind == "error":
                item, error, original = message[1], message[2], message[3]
                record = error_record(self.captioner, item, error)
                self.emitter.emit(item, record, getattr(error, "reason", None) or "error")
                if original:
                    self.emitter.remember(item.content_hash, record)
            else:
                self.emitter.copy(message[1])
        self.emitter.check_done()

    # -- driver ----------------------------------------------------------------------------------------
    def _finish_writing(self, writer: threading.Thread) -> None:
        """After the model failed (or Ctrl-C): let the writer write every record already generated."""
        if not writer.is_alive():
            return
        try:
            self._put(self._records, _ABORT)
        except _Stopped:  # the writer itself failed
            return
        writer.join(timeout=120)

    def run(self) -> Stats:
        """Run to the end of the sources. On any failure, what was finished is still committed."""
        self._pool = make_pool(self.options.workers)
        threads = [
            self._thread(self._feed, "feed"),
            self._thread(self._batch, "batch"),
            self._thread(self._write, "write"),
        ]
        try:
            if self.out.ledger.count() == 0:  # a fresh run has work: load the weights while the workers start
                self._load_engine()
                self._engine_loaded = True
            self._generate()
            threads[2].join()
        except _Stopped:
            pass
        except BaseException:
            self._halt_inputs.set()
            self._finish_writing(threads[2])
            raise
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=10)
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._retry_pool is not None:
                self._retry_pool.shutdown(wait=True)
            if self._fetch_pool is not None:
                self._fetch_pool.shutdown(wait=True, cancel_futures=True)
            self.out.commit()  # everything already handed to the run folder is complete: keep it
        if self._errors:
            raise self._errors[0]
        self.out.close()
        return self.stats


def _generation_reason(record: Record, generation: Generation) -> str | None:
    if record.status != "error":
        return None
    return "engine error" if generation.error else None


def _request_size(request: Request) -> int:
    """Roughly how many tokens a request costs: image pixels, video frames, prompt length."""
    pixels = sum(im.size[0] * im.size[1] for im in request.images)
    pixels += sum(f.size[0] * f.size[1] for video in request.videos for f in video)
    return pixels // 784 + sum(len(str(m.get("content"))) for m in request.messages) // 4
