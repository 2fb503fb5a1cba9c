"""Each input's `{meta.COLUMN}` values without holding a table in memory: the recipe's metadata file indexed on
disk, and a manifest INPUT's rows read along with its items (and the ids a stage has seen, on disk too).

The metadata file (JSONL or CSV/TSV) becomes a SQLite file in the run folder's `index/` (built once per version of
the file, shared by the stages; a changed file gets a new one), so a file of millions of rows costs a few MiB of
memory however large it is. The matching is the same as keeping the rows in a dict: the key column is the first
of KEY_COLUMNS in the first row; each row is found by its key's value, and by the value's base name unless an
earlier row (or a key equal to that name) has it; a later row with the same value wins. A lookup tries the item's
id, its source, its file name and its stem, in that order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Generator, Iterator
from typing import Any

from capmill.errors import ConfigError

KEY_COLUMNS = ("id", "file_name", "filename", "file", "path", "image", "stem", "key")
INDEX_VERSION = 1  # raised when the index layout changes: older files are rebuilt
BATCH = 5000  # rows per insert
LOOKUP = "SELECT keys.key, rows.data FROM keys JOIN rows ON rows.n = keys.n WHERE keys.key IN (?, ?, ?, ?)"
_BUILD = threading.Lock()  # stages side by side build one index once


def read_table(path: str) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """(line number, row) of a JSONL or CSV/TSV file, numbered as the manifest sources number them."""
    if path.lower().endswith((".jsonl", ".ndjson")):
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        yield lineno, row
    else:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
        with open(path, encoding="utf-8", newline="") as handle:
            yield from enumerate(csv.DictReader(handle, delimiter=delimiter), start=2)


class MetadataIndex:
    """Extra columns per item from a JSONL/CSV file, matched by id, file name, stem or path (rows on disk)."""

    def __init__(self, path: str | None, index_dir: str):
        self.db: sqlite3.Connection | None = None
        if path:
            built = build_index(path, index_dir)
            self.db = sqlite3.connect(f"file:{built}?mode=ro", uri=True, check_same_thread=False)

    def lookup(self, context: dict[str, Any], source: str) -> dict[str, Any]:
        if self.db is None:
            return {}
        wanted = (context["id"], source, context["filename"], context["stem"])  # in this order
        found = dict(self.db.execute(LOOKUP, wanted).fetchall())
        for key in wanted:
            if key in found:
                return _decode(found[key])
        return {}

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def build_index(path: str, index_dir: str) -> str:
    """The index of `path` in `index_dir` (built unless this version of the file has one); ConfigError for a file
    without a key column."""
    stat = os.stat(path)
    where = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    version = hashlib.sha256(f"{INDEX_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = os.path.join(index_dir, f"metadata-{where}-{version}.sqlite")
    with _BUILD:
        if os.path.isfile(target):
            return target
        os.makedirs(index_dir, exist_ok=True)
        partial = f"{target}.{os.getpid()}.tmp"  # another process may build the same: the last rename wins
        if os.path.exists(partial):
            os.remove(partial)
        try:
            _build(path, partial)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        for name in os.listdir(index_dir):  # earlier versions of the same file
            if name.startswith(f"metadata-{where}-") and name.endswith(".sqlite") and name != os.path.basename(target):
                os.remove(os.path.join(index_dir, name))
    return target


def _build(path: str, out: str) -> None:
    db = sqlite3.connect(out)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE rows (n INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        db.execute("CREATE TABLE keys (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
        rows = (row for _, row in read_table(path))
        first = next(rows, None)
        key = next((k for k in KEY_COLUMNS if first is not None and k in first), None)
        if key is None:
            raise ConfigError(f"metadata {path}: no key column (one of {', '.join(KEY_COLUMNS)})")
        batch: list[tuple[int, dict[str, Any]]] = []
        for n, row in enumerate(_chain(first, rows)):
            batch.append((n, row))
            if len(batch) >= BATCH:
                _insert(db, batch, key)
                batch = []
        _insert(db, batch, key)
        db.commit()
    finally:
        db.close()


def _insert(db: sqlite3.Connection, batch: list[tuple[int, dict[str, Any]]], key: str) -> None:
    """Rows in order, with the dict's rules: the value's entry is replaced, its base name's is kept if there."""
    db.executemany("INSERT INTO rows VALUES (?, ?)", [(n, _encode(row)) for n, row in batch])
    for n, row in batch:
        value = str(row.get(key) or "")
        if value:
            db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?)", (value, n))
            db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?)", (os.path.basename(value), n))


def _encode(row: dict[str, Any]) -> str:
    # (key, value) pairs: the order and a CSV row's None key (its extra fields) come back as they were
    return json.dumps(list(row.items()))


def _decode(text: str) -> dict[str, Any]:
    return dict(json.loads(text))


def _chain(first: dict[str, Any] | None, rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    if first is not None:
        yield first
        yield from rest


class ManifestRows:
    """A manifest INPUT's rows by line number, read along with its items: the manifest source yields them in line
    order, so the file is read once beside it and no row is kept past its item (an earlier line asked for reads
    the file again from the start)."""

    def __init__(self, path: str):
        self.path = path
        self._rows: Generator[tuple[int, dict[str, Any]], None, None] | None = None
        self._pending: tuple[float, dict[str, Any]] = (-1, {})
        self._asked = -1

    def get(self, lineno: Any) -> dict[str, Any]:
        if not isinstance(lineno, int) or isinstance(lineno, bool):
            return {}
        if self._rows is None or lineno < self._asked:
            self.close()
            self._rows, self._pending = read_table(self.path), (-1, {})
        self._asked = lineno
        while self._pending[0] < lineno:
            self._pending = next(self._rows, (math.inf, {}))
        return self._pending[1] if self._pending[0] == lineno else {}

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
            self._rows = None


class SeenIds:
    """The ids a stage's source has yielded, in a temporary SQLite file (deleted on close), not a Python set."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", check_same_thread=False)  # "": a private on-disk temporary database
        self.db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, item_id: str) -> bool:
        """True the first time an id is added, False after."""
        return self.db.execute("INSERT OR IGNORE INTO ids VALUES (?)", (item_id,)).rowcount == 1

    def close(self) -> None:
        self.db.close()
