"""Fetch and decode in worker processes: what runs there, and the pool that runs it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from capmill.data.fetch import FetchOptions, load
from capmill.data.images import DecodeOptions, decode_with_format
from capmill.errors import InputError
from capmill.models.request_builder import RequestBuilder
from capmill.records import Item, Request


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


@dataclass
class Loaded:
    """A decode job's result: the item, or why it cannot be read; with a builder, its Request or why not."""

    item: Item
    error: InputError | None = None
    seconds: float = 0.0
    request: Request | None = None
    prepare_error: InputError | None = None
    prepare_seconds: float = 0.0


def load_and_prepare(
    item: Item,
    decode: DecodeOptions,
    fetch: FetchOptions,
    builder: RequestBuilder | None = None,
    mode: str | None = None,
    keep_data: bool = True,
) -> Loaded:
    """`load_item`, then (with a builder) the card's resizing and prompt, so the model's side gets a Request.

    The decoded image is dropped once the Request holds what the model needs (and the bytes too, unless a sink
    writes them), so only that crosses back from a worker process."""
    item, error, seconds = load_item(item, decode, fetch)
    loaded = Loaded(item, error, seconds)
    if error is not None or builder is None:
        return loaded
    start = time.perf_counter()
    try:
        loaded.request = builder.build(item, mode)
    except InputError as exc:
        loaded.prepare_error = exc
    loaded.prepare_seconds = time.perf_counter() - start
    if loaded.request is not None:
        item.image = None
        if not keep_data:
            item.data = None
    return loaded


def item_error(item: Item) -> InputError | None:
    """The InputError of an item whose source could not read it ("reason: detail" in `item.error`)."""
    if item.error is None:
        return None
    reason, _, detail = item.error.partition(": ")
    return InputError(item.source, reason, detail)


def done_future(item: Item) -> Future:
    """A finished job for an item that needs no fetching or decoding (text in hand, or already failed)."""
    future: Future = Future()
    future.set_result(Loaded(item, item_error(item)))
    return future


def make_pool(workers: int) -> Executor:
    """`workers` spawned processes (spawn: safe beside a threaded torch); 0: no pool, each job runs when its
    result is asked for, in the asking thread (the pipeline's batcher, which takes turns with the model)."""
    if workers <= 0:
        return InlineExecutor()
    import multiprocessing

    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    )


class InlineExecutor(Executor):
    """Runs nothing at submit: the job runs in whichever thread first asks the future for its result."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return _LazyFuture(fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _LazyFuture(Future):
    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]):
        super().__init__()
        self._job: tuple | None = (fn, args, kwargs)

    def result(self, timeout: float | None = None) -> Any:
        if self._job is not None:
            fn, args, kwargs = self._job
            self._job = None
            try:
                self.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - raised to the caller below, as a pool's future would
                self.set_exception(exc)
        return super().result(timeout)


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
