"""Dynamic batching in front of the engine: concurrent requests become one engine call.

A batch closes when it holds `max_batch` requests or `max_wait` has passed since its first request (at once
when nobody else is on the way, so a lone client never pays the wait); the
engine runs on one worker thread so the event loop keeps answering (health, metrics, new requests) meanwhile.
Requests cancelled while queued (client gone, timeout) never reach the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from capmill.errors import CapmillError, EngineError, OverloadedError
from capmill.records import Generation, Request
from capmill.serve.metrics import Metrics

ARRIVING_WAIT_FACTOR = 4  # a batch waits up to 4x max_wait for requests the server is receiving right now
RunBatch = Callable[[Sequence[Request]], list[Generation]]


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future
    queued_at: float


class Arrival:
    """One request on its way to the queue; `done()` (idempotent) when it is queued or has failed."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.open = batcher, True
        batcher.incoming += 1

    def done(self) -> None:
        if self.open:
            self.open = False
            self.batcher.incoming -= 1

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()


class Batcher:
    """Queue + one engine worker. `submit` is non-blocking and raises OverloadedError when the queue is full."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics = metrics or Metrics()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._batch_seconds = 1.0  # running estimate for Retry-After
        self._last_batch_size = 0
        self.incoming = 0  # requests received and being prepared (decoding images) that will soon be submitted

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capmill-engine")
        self._task = asyncio.create_task(self._loop(), name="capmill-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._queue:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(OverloadedError("server is shutting down", retry_after=5))
        if self._executor:
            self._executor.shutdown(wait=True)

    def submit(self, request: Request) -> asyncio.Future:
        """Queue a request; the future resolves to its Generation. Raises OverloadedError when full."""
        if self._queue is None:
            raise OverloadedError("the engine is not running yet", retry_after=2)
        if self._queue.qsize() >= self.max_queue:
            batches_ahead = self._queue.qsize() / self.max_batch + 1
            self.metrics.reject("queue_full")
            raise OverloadedError(
                f"queue full ({self.max_queue} requests waiting); retry later",
                retry_after=max(1.0, batches_ahead * self._batch_seconds),
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request, future, time.perf_counter()))
        self._publish()
        return future

    async def generate(self, request: Request) -> Generation:
        return await self.submit(request)

    def arrival(self) -> Arrival:
        """Count a request as on its way from the moment it reaches the server until it is queued (or fails),
        so a forming batch waits for it instead of leaving without it."""
        return Arrival(self)

    def _worth_waiting(self) -> bool:
        """Waiting for company only pays if someone may come: a request being prepared, or the clients of the
        last batch (answered together, they tend to come back together). A lone client never waits."""
        return self.incoming > 0 or self._last_batch_size > 1

    def _publish(self) -> None:
        self.metrics.set_queue(self.depth, self._in_flight)

    async def _collect(self) -> list[_Pending]:
        """Take the first waiting request, then more until the batch is full or the waiting stops paying:
        up to `max_wait` while company may come (`_worth_waiting`), and up to `ARRIVING_WAIT_FACTOR` times
        that while requests are being received and prepared right now."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        start = time.perf_counter()
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            waited = time.perf_counter() - start
            limit = self.max_wait_s * (ARRIVING_WAIT_FACTOR if self.incoming > 0 else 1)
            if waited >= limit or not self._worth_waiting():
                break
            try:  # short slices: the conditions above change as requests arrive or fail
                batch.append(await asyncio.wait_for(self._queue.get(), min(limit - waited, 0.005)))
            except (asyncio.TimeoutError, TimeoutError):
                continue
        return [p for p in batch if not p.future.done()]  # cancelled while waiting: skip

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                self._publish()
                continue
            self._in_flight = self._last_batch_size = len(batch)
            self._publish()
            started = time.perf_counter()
            try:
                generations = await loop.run_in_executor(self._executor, self.run_batch, [p.request for p in batch])
                if len(generations) != len(batch):
                    raise EngineError(f"engine returned {len(generations)} generations for {len(batch)} requests")
            except Exception as exc:  # the engine failed as a whole: every request in the batch learns why
                error: BaseException = exc if isinstance(exc, CapmillError) else EngineError(f"engine failed: {exc}")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
            else:
                seconds = time.perf_counter() - started
                self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * seconds
                self.metrics.batch_done(
                    len(batch),
                    seconds,
                    sum(g.prompt_tokens for g in generations),
                    sum(g.completion_tokens for g in generations),
                )
                for pending, generation in zip(batch, generations, strict=True):
                    generation.timings.setdefault("queue_s", started - pending.queued_at)
                    generation.timings.setdefault("batch_s", seconds)
                    generation.timings.setdefault("batch_size", float(len(batch)))
                    if not pending.future.done():
                        pending.future.set_result(generation)
            finally:
                self._in_flight = 0
                self._publish()
