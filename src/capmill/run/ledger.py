"""The resume ledger: which input ids are done, in which shard, under which key (content hash + settings).

SQLite in WAL mode: one transaction per committed shard, so after a crash the ledger names exactly the shards
that were renamed into place, and lookups by id or key need no memory per item.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  id TEXT PRIMARY KEY, key TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, shard TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_key ON items(key);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, rows INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    id: str
    key: str  # "<content sha256>:<settings hash>": the resume and deduplication key
    status: str
    reason: str | None
    shard: str


class Ledger:
    """Thread-safe; every write is one transaction covering one whole shard."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.executescript(SCHEMA)

    def commit_shard(self, shard: str, entries: Iterable[Entry]) -> None:
        """Record a renamed shard and all its items at once (or nothing, if the process dies meanwhile)."""
        rows = [(e.id, e.key, e.status, e.reason, e.shard) for e in entries]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)", rows)
                self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?)", (shard, len(rows)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def has_id(self, item_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is not None

    def find_key(self, key: str, include_errors: bool = False) -> Entry | None:
        """A done entry with this key (a non-error one first): its record can be copied for a duplicate input."""
        where = "" if include_errors else " AND status != 'error'"
        query = (
            f"SELECT id, key, status, reason, shard FROM items WHERE key = ?{where} ORDER BY status = 'error' LIMIT 1"
        )
        with self._lock:
            row = self._db.execute(query, (key,)).fetchone()
        return Entry(*row) if row else None

    def shards(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM shards")}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def by_status(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status ORDER BY status"))

    def errors_by_reason(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT COALESCE(reason, 'unknown'), COUNT(*) FROM items WHERE status = 'error' GROUP BY 1 ORDER BY 2 DESC"
            )
            return dict(rows)

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
