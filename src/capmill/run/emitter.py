"""Writing records, and giving each duplicate input its original's record: shared by every runner."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from capmill.records import Item, Record
from capmill.run.stats import Stats


class RecordEmitter:
    """Hands records to the run folder and copies an original's record to its duplicates once it is written.

    Duplicates whose original is still in the model wait here; `check_done` refuses to end a run with any left,
    so no input is ever dropped silently.
    """

    def __init__(self, out: Any, stats: Stats, on_progress: Callable[[Stats], None], recent_size: int):
        self.out, self.stats, self.on_progress = out, stats, on_progress
        self.recent_size = recent_size
        self.recent: OrderedDict[str, Record] = OrderedDict()
        self.waiting: dict[str, list[Item]] = {}

    def emit(self, item: Item, record: Record, reason: str | None, media: bytes | None = None) -> None:
        start = time.perf_counter()
        self.out.add(record, media if media is not None else item.data, reason)
        self.stats.add_time("write", time.perf_counter() - start)
        self.stats.count_record(record.status, reason if record.status == "error" else None)
        self.on_progress(self.stats)

    def remember(self, content_hash: str, record: Record) -> None:
        """An original's record is written: keep it for later duplicates, and release those already waiting."""
        self.recent[content_hash] = record
        if len(self.recent) > self.recent_size:
            self.recent.popitem(last=False)
        for follower in self.waiting.pop(content_hash, []):
            self.emit(follower, copy_for(follower, record), None)

    def copy(self, item: Item) -> None:
        """A duplicate input: its original's record now, or as soon as the original is written."""
        key = item.content_hash
        original = self.recent.get(key) or self.out.find_record(self.out.key_for(key), include_errors=True)
        if original is not None and original.error_kind == "retryable" and key not in self.recent:
            original = None  # an earlier session's failure: the original is being retried now, wait for it
        if original is None:
            self.waiting.setdefault(key, []).append(item)  # its original is still in the model
        else:
            self.emit(item, copy_for(item, original), None)

    def check_done(self) -> None:
        if self.waiting:  # cannot happen unless an original was lost; never drop an input silently
            raise RuntimeError(f"{sum(map(len, self.waiting.values()))} duplicate inputs lost their original")


def unfinished(source: Iterable[Item], out: Any, stats: Stats) -> Iterator[Item]:
    """The source's items that still need a record: each id once (the ledger's on-disk index of ids read this
    session, so memory does not grow with the inputs), none the run folder holds as done."""
    for item in source:
        stats.seen += 1
        if not out.ledger.first_sight(item.id):
            stats.duplicate_ids += 1
            continue
        if out.is_done(item.id):
            stats.skipped_done += 1
            continue
        yield item


def error_record(captioner: Any, item: Item, error: Exception) -> Record:
    """The record of an input that could not be read, with its kind: retryable (a download that may work later)
    or final (the input is bad)."""
    record = captioner.error_record(item, str(error))
    record.error_kind = "retryable" if getattr(error, "retryable", False) else "final"
    return record


def copy_for(item: Item, original: Record) -> Record:
    """The record of a duplicate input: the original's caption under the duplicate's own id and source."""
    meta = {k: v for k, v in item.meta.items() if isinstance(v, (str, int, float, bool))}
    meta["duplicate_of"] = original.id
    return dataclasses.replace(original, id=item.id, source=item.source, meta=meta, timings={}, tokens={})
