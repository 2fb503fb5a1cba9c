"""The batcher's plumbing, with a scripted run_batch (the engine itself is tested through the real model elsewhere)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from capmill.errors import EngineError, OverloadedError
from capmill.records import Decoding, Generation, Request
from capmill.serve.batcher import Batcher
from capmill.serve.metrics import Metrics


def request(i: int) -> Request:
    return Request(item_id=str(i), messages=[], decoding=Decoding())


class Recorder:
    """Records each batch it is given and answers with the item ids; optionally slow or failing."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.seconds, self.fail_on = seconds, fail_on

    def __call__(self, requests):  # noqa: ANN001
        self.threads.add(threading.current_thread().name)
        self.batches.append([r.item_id for r in requests])
        time.sleep(self.seconds)
        if self.fail_on and any(r.item_id == self.fail_on for r in requests):
            raise RuntimeError("boom")
        return [Generation(text=f"out-{r.item_id}") for r in requests]


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_requests_become_batches_in_order():
    engine = Recorder(seconds=0.05)

    async def main():
        batcher = Batcher(engine, max_batch=4, max_wait_s=0.05, max_queue=100)
        await batcher.start()
        results = await asyncio.gather(*(batcher.generate(request(i)) for i in range(10)))
        await batcher.stop()
        return results

    results = run(main())
    assert [g.text for g in results] == [f"out-{i}" for i in range(10)]
    assert [len(b) for b in engine.batches] == [4, 4, 2]
    assert engine.threads == {"capmill-engine_0"}  # off the event loop, on the one engine thread
    assert results[0].timings["batch_size"] == 4


def test_a_lone_request_does_not_wait_but_one_with_company_on_the_way_does():
    engine = Recorder()

    async def main():
        # max_wait is far beyond the time-outs below: a request that waited for it would fail them
        batcher = Batcher(engine, max_batch=8, max_wait_s=60, max_queue=10)
        await batcher.start()
        await asyncio.wait_for(batcher.generate(request(0)), timeout=20)  # nobody else is coming: no wait

        async def late_arrival():
            with batcher.arrival():  # being prepared (decoding its image) for 0.1 s, then queued
                await asyncio.sleep(0.1)
                future = batcher.submit(request(2))
            return await future

        both = await asyncio.wait_for(asyncio.gather(batcher.generate(request(1)), late_arrival()), timeout=20)
        await batcher.stop()
        return both

    both = run(main())
    assert engine.batches == [["0"], ["1", "2"]]  # the second request joined the first's batch
    assert [g.text for g in both] == ["out-1", "out-2"]


def test_a_forming_batch_waits_at_most_max_wait():
    engine = Recorder()

    async def main():
        batcher = Batcher(engine, max_batch=8, max_wait_s=0.2, max_queue=10)
        await batcher.start()
        with batcher.arrival():  # someone is always "on the way" but never arrives
            start = time.perf_counter()
            await asyncio.wait_for(batcher.generate(request(0)), timeout=20)  # it does not wait for ever
            waited = time.perf_counter() - start
        await batcher.stop()
        return waited

    assert run(main()) >= 0.15  # it did wait for the one on the way (max_wait 0.2, less the clock's slack)


def test_event_loop_stays_free_while_the_engine_runs():
    engine = Recorder(seconds=0.5)

    async def main():
        batcher = Batcher(engine, max_batch=1, max_wait_s=0, max_queue=10)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.generate(request(0)))
        ticks = 0
        while not pending.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await batcher.stop()
        return ticks

    assert run(main()) > 10


def test_full_queue_raises_overloaded_with_retry_after():
    engine = Recorder(seconds=0.3)

    async def main():
        batcher = Batcher(engine, max_batch=1, max_wait_s=0, max_queue=2, metrics=Metrics())
        await batcher.start()
        first = batcher.submit(request(0))
        await asyncio.sleep(0.05)  # the first is inside the engine now
        queued = [batcher.submit(request(1)), batcher.submit(request(2))]
        with pytest.raises(OverloadedError) as info:
            batcher.submit(request(3))
        await asyncio.gather(first, *queued)
        await batcher.stop()
        return info.value, batcher.metrics.render()

    error, metrics = run(main())
    assert error.retry_after >= 1 and "queue full" in str(error)
    assert 'capmill_rejected_total{reason="queue_full"} 1' in metrics


def test_cancelled_requests_never_reach_the_engine():
    engine = Recorder(seconds=0.2)

    async def main():
        batcher = Batcher(engine, max_batch=1, max_wait_s=0, max_queue=10)
        await batcher.start()
        first = batcher.submit(request(0))
        await asyncio.sleep(0.05)
        gone = batcher.submit(request(1))
        gone.cancel()  # the client went away while queued
        await first
        await batcher.generate(request(2))
        await batcher.stop()

    run(main())
    assert engine.batches == [["0"], ["2"]]


def test_an_engine_failure_reaches_every_request_of_its_batch_and_the_batcher_goes_on():
    engine = Recorder(fail_on="1")

    async def main():
        batcher = Batcher(engine, max_batch=4, max_wait_s=0.05, max_queue=10)
        await batcher.start()
        results = await asyncio.gather(*(batcher.generate(request(i)) for i in range(3)), return_exceptions=True)
        after = await batcher.generate(request(9))
        await batcher.stop()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, EngineError) and "boom" in str(r) for r in results)
    assert after.text == "out-9"


def test_service_retries_a_failed_batch_one_by_one():
    """CaptionService._run_batch: one bad request must not fail the others sharing its batch."""
    from capmill.serve.service import CaptionService

    engine = Recorder(fail_on="1")
    service = CaptionService.__new__(CaptionService)
    service.captioner = type("C", (), {"generate": staticmethod(engine)})()
    out = service._run_batch([request(0), request(1), request(2)])
    assert [g.text for g in out] == ["out-0", "", "out-2"]
    assert out[1].error and "boom" in out[1].error
    assert engine.batches == [["0", "1", "2"], ["0"], ["1"], ["2"]]
