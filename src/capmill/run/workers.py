"""Fetch and decode in worker processes: what runs there, and the pool that runs it."""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from capmill.data.fetch import FetchOptions, load
from capmill.data.images import DecodeOptions, decode_with_format
from capmill.errors import InputError
from capmill.records import Item


def load_item(item: Item, decode: DecodeOptions, fetch: FetchOptions) -> tuple[Item, InputError | None, float]:
    """Fill the item's bytes (or text), hash them, decode an image upright to RGB; never raises for bad input."""
    start = time.perf_counter()
    try:
        load(item, fetch)
        _ = item.content_hash  # hashed here, off the main process
        if item.kind == "image":
            item.image, fmt = decode_with_format(item.data, item.source, decode)
            if fmt:
                item.meta.setdefault("format", fmt)
        error = None
    except InputError as exc:
        error = exc
    return item, error, time.perf_counter() - start


def item_error(item: Item) -> InputError | None:
    """The InputError of an item whose source could not read it ("reason: detail" in `item.error`)."""
    if item.error is None:
        return None
    reason, _, detail = item.error.partition(": ")
    return InputError(item.source, reason, detail)


def done_future(item: Item) -> Future:
    """A finished job for an item that needs no fetching or decoding (text in hand, or already failed)."""
    future: Future = Future()
    future.set_result((item, item_error(item), 0.0))
    return future


def make_pool(workers: int) -> Executor:
    """`workers` spawned processes (spawn: safe beside a threaded torch); 0 means one thread in this process."""
    if workers <= 0:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="capmill-decode")
    import multiprocessing

    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )


def _init_worker() -> None:
    """Ctrl-C is the parent's to handle (it commits what is done); decoding only has to keep ahead of the model,
    so on a busy CPU the model's threads go first."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(5)
    except OSError:
        pass
