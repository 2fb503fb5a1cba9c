"""The cluster side of the Ray runner: the read stage, the caption actor, the claim registry, the row layout.

Rows travel through the Ray Dataset as Arrow tables with fixed schemas (so all-null columns keep their types);
records travel back as JSON, written by the driver (capmill.run.ray_runner) exactly as the local runner would.
An Item subclass (a recipe stage's item, whose content key covers its prompt) travels as its class and extra
fields, so the cluster hashes it as the local runner does.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from typing import Any

from capmill.records import Item


class CaptionWorker:
    """A Ray Data actor: one Captioner (one engine, loaded once) turning read items into records."""

    def __init__(self, make_captioner, mode, decode, fetch, registry, wants_media, threads):  # noqa: ANN001
        try:
            import torch

            if not torch.cuda.is_available():
                torch.set_num_threads(threads)  # the CPUs this actor claimed, not the whole machine's
        except ImportError:
            pass
        self.captioner = make_captioner()
        self.mode, self.decode, self.fetch = mode, decode, fetch
        self.registry, self.wants_media = registry, wants_media

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import ray

        from capmill.errors import InputError
        from capmill.run.emitter import error_record
        from capmill.run.workers import load_item

        out: list[dict[str, Any]] = []
        ready: list[tuple[dict[str, Any], Item]] = []
        for row in batch.to_pylist():
            item = _item_of(row)
            if row["error"] is not None:  # the read stage could not fetch it
                error = InputError(item.source, row["reason"] or "error")
                record = error_record(self.captioner, item, error)
                record.error = row["error"]
                out.append(_out_row(row, item, "error", record, row["reason"] or "error", media=self._media(item)))
                continue
            item, error, seconds = load_item(item, self.decode, self.fetch)  # decode, exactly as the local workers
            if error is not None:
                record = error_record(self.captioner, item, error)
                out.append(_out_row(row, item, "error", record, error.reason or "error", media=self._media(item)))
                continue
            ready.append((row, item))
        pairs = [(item.content_hash, item.id) for _, item in ready]
        claims = ray.get(self.registry.claim.remote(pairs)) if pairs else []
        todo: list[tuple[dict[str, Any], Item, Any]] = []
        for (row, item), original in zip(ready, claims, strict=True):
            if not original:
                out.append(_out_row(row, item, "copy", None, None))
                continue
            start = time.perf_counter()
            try:
                request = self.captioner.prepare(item, self.mode)
            except InputError as exc:
                record = error_record(self.captioner, item, exc)
                out.append(_out_row(row, item, "error", record, exc.reason or "error", original=True))
                continue
            item.image = None
            todo.append((row, item, request))
            row["_prep"] = time.perf_counter() - start
        if todo:
            start = time.perf_counter()
            generations = self.captioner.generate([request for _, _, request in todo])
            engine = (time.perf_counter() - start) / len(todo)
            for (row, item, request), generation in zip(todo, generations, strict=True):
                start = time.perf_counter()
                record = self.captioner.finish(item, request, generation)
                times = {"engine": engine, "preprocess": row["_prep"], "parse": time.perf_counter() - start}
                reason = "engine error" if record.status == "error" and generation.error else None
                out.append(
                    _out_row(
                        row, item, "generated", record, reason, media=self._media(item), original=True, times=times
                    )
                )
        return pa.Table.from_pylist(out, schema=_out_schema())

    def _media(self, item: Item) -> bytes | None:
        return item.data if self.wants_media else None


def read_batch(batch: Any, fetch: Any) -> Any:
    """Ray Data read stage: fetch each item's bytes (file or URL) and hash them; failures ride on the row."""
    import pyarrow as pa

    from capmill.data.fetch import load
    from capmill.errors import InputError

    rows = batch.to_pylist()
    for row in rows:
        if row["error"] is not None:
            continue
        item = _item_of(row)
        try:
            load(item, fetch)
            row["hash"] = item.content_hash
            row["data"], row["text"] = item.data, item.text
        except InputError as exc:
            row["error"], row["reason"] = str(exc), exc.reason
    return pa.Table.from_pylist(rows, schema=item_schema())


def registry_class(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class ClaimRegistry:
        """Which content hashes are being (or were) captioned: the first input to claim one is its original.

        Runs on the driver's node: a hash with a usable record in the run's ledger is done already (its inputs
        are copies); claims of this session are kept in a SQLite file, so memory does not grow with inputs."""

        def __init__(self, ledger_path: str, settings_hash: str):
            import sqlite3
            import tempfile

            self.suffix = f":{settings_hash}"
            self.ledger = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
            self.tmp = tempfile.NamedTemporaryFile(suffix=".sqlite")  # noqa: SIM115 - lives as long as the actor
            self.db = sqlite3.connect(self.tmp.name, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=OFF")
            self.db.execute("CREATE TABLE claims (hash TEXT PRIMARY KEY, owner TEXT) WITHOUT ROWID")

        def claim(self, pairs: list[tuple[str, str]]) -> list[bool]:
            answers = []
            for content_hash, item_id in pairs:
                done = self.ledger.execute(
                    "SELECT 1 FROM items WHERE key = ? AND status != 'error' LIMIT 1", (content_hash + self.suffix,)
                ).fetchone()
                if done:
                    answers.append(False)
                    continue
                self.db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (content_hash, item_id))
                owner = self.db.execute("SELECT owner FROM claims WHERE hash = ?", (content_hash,)).fetchone()[0]
                answers.append(owner == item_id)  # the same item asking again (a retried task) keeps its claim
            return answers

    return ClaimRegistry


def row_of(i: int, item: Item) -> dict[str, Any]:
    return {
        "i": i,
        "id": item.id,
        "source": item.source,
        "kind": item.kind,
        "text": item.text,
        "data": item.data,
        "meta": json.dumps(item.meta, default=str),
        "hash": item._hash,
        "error": None,
        "reason": None,
        "item_type": _item_type(item),
    }


def _item_type(item: Item) -> str | None:
    """An Item subclass as JSON: its "module:class" and the fields it adds (None for a plain Item)."""
    cls = type(item)
    if cls is Item:
        return None
    base = {f.name for f in dataclasses.fields(Item)}
    extra = {f.name: getattr(item, f.name) for f in dataclasses.fields(item) if f.name not in base}
    return json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}", "fields": extra})


def _item_of(row: dict[str, Any]) -> Item:
    cls: type[Item] = Item
    extra: dict[str, Any] = {}
    if row.get("item_type"):
        spec = json.loads(row["item_type"])
        module, _, name = spec["class"].partition(":")
        cls, extra = getattr(importlib.import_module(module), name), spec["fields"]
        if not (isinstance(cls, type) and issubclass(cls, Item)):
            raise TypeError(f"{spec['class']} is not an Item")
    return cls(
        id=row["id"],
        source=row["source"],
        kind=row["kind"],
        data=row["data"],
        text=row["text"],
        meta=json.loads(row["meta"]) if row["meta"] else {},
        _hash=row["hash"],
        **extra,
    )


def _out_row(row, item, kind, record, reason, media=None, original=False, times=None) -> dict[str, Any]:  # noqa: ANN001
    return {
        "i": row["i"],
        "id": item.id,
        "source": item.source,
        "item_kind": item.kind,
        "kind": kind,
        "record": json.dumps(record.to_dict(), ensure_ascii=False, default=str) if record is not None else None,
        "reason": reason,
        "hash": item._hash,
        "meta": json.dumps(item.meta, default=str),
        "media": media,
        "original": original,
        "times": json.dumps(times) if times else None,
    }


def item_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("i", pa.int64()),
            ("id", pa.string()),
            ("source", pa.string()),
            ("kind", pa.string()),
            ("text", pa.string()),
            ("data", pa.binary()),
            ("meta", pa.string()),
            ("hash", pa.string()),
            ("error", pa.string()),
            ("reason", pa.string()),
            ("item_type", pa.string()),
        ]
    )


def _out_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("i", pa.int64()),
            ("id", pa.string()),
            ("source", pa.string()),
            ("item_kind", pa.string()),
            ("kind", pa.string()),
            ("record", pa.string()),
            ("reason", pa.string()),
            ("hash", pa.string()),
            ("meta", pa.string()),
            ("media", pa.binary()),
            ("original", pa.bool_()),
            ("times", pa.string()),
        ]
    )
