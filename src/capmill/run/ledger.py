"""The resume ledger: which input ids are done, in which shard, under which key (content hash + settings).

SQLite in WAL mode: one transaction per committed shard, so after a crash the ledger names exactly the shards
that were renamed into place, and lookups by id or key need no memory per item. An error record says whether
it is `retryable` (the engine or the network failed) or `final` (the input is bad): only final errors count as
done, so a re-run retries the rest. The session's own indexes (ids read, content sent to the model) live in
SQLite temporary tables, on disk, so memory does not grow with the number of inputs.
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
SESSION = """
PRAGMA temp_store=FILE;
CREATE TEMP TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS sent (key TEXT PRIMARY KEY) WITHOUT ROWID;
"""
RETRYABLE, FINAL = "retryable", "final"
# an error's kind; in ledgers written before kinds existed, an engine error is retryable and the rest final
KIND_SQL = (
    "CASE WHEN error_kind IN ('retryable', 'final') THEN error_kind "
    "WHEN reason = 'engine error' THEN 'retryable' ELSE 'final' END"
)


@dataclass(frozen=True)
class Entry:
    id: str
    key: str  # "<content sha256>:<settings hash>": the resume and deduplication key
    status: str
    reason: str | None
    shard: str
    error_kind: str | None = None  # error records: "retryable" or "final"
    pos: int | None = None  # the record's position in its shard: a duplicate's original is read without a scan


class Ledger:
    """Thread-safe; every write is one transaction covering one whole shard."""

    def __init__(self, path: str, *, retry_errors: bool = False, session: bool = True):
        self.path = path
        self.retry_errors = retry_errors  # every error record is redone, final ones too
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        if "error_kind" not in columns:  # a ledger written before errors had a kind
            self._db.execute("ALTER TABLE items ADD COLUMN error_kind TEXT")
        if "pos" not in columns:
            self._db.execute("ALTER TABLE items ADD COLUMN pos INTEGER")
        self._db.execute("CREATE INDEX IF NOT EXISTS items_shard ON items(shard)")
        if session:  # a run's own indexes; a reader needs none
            self._db.executescript(SESSION)

    def commit_shard(self, shard: str, entries: Iterable[Entry]) -> None:
        """Record a renamed shard and all its items at once (or nothing, if the process dies meanwhile)."""
        rows = [(e.id, e.key, e.status, e.reason, e.shard, e.error_kind, e.pos) for e in entries]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO items (id, key, status, reason, shard, error_kind, pos) "
                    "VALUES (?,?,?,?,?,?,?)",
                    rows,
                )
                self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?)", (shard, len(rows)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def has_id(self, item_id: str) -> bool:
        """Whether the id has any record (done or to be retried)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is not None

    def is_done(self, item_id: str) -> bool:
        """Whether the id needs no more work: a record that is not an error, or (unless retrying all) a final one."""
        with self._lock:
            row = self._db.execute("SELECT status, error_kind, reason FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return False
        status, kind, reason = row
        if status != "error":
            return True
        return not self.retry_errors and _kind(kind, reason) == FINAL

    def find_key(self, key: str, include_errors: bool = False) -> Entry | None:
        """A done entry with this key (a non-error one first): its record can be copied for a duplicate input."""
        where = "" if include_errors else " AND status != 'error'"
        query = (
            "SELECT id, key, status, reason, shard, error_kind, pos FROM items "
            f"WHERE key = ?{where} ORDER BY status = 'error' LIMIT 1"
        )
        with self._lock:
            row = self._db.execute(query, (key,)).fetchone()
        return Entry(*row) if row else None

    def ids_in_shard(self, shard: str) -> set[str]:
        """The ids whose current record is in this shard (a retried id's record moves to a later shard)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM items WHERE shard = ?", (shard,))}

    # -- the session's on-disk indexes ------------------------------------------------------------------
    def first_sight(self, item_id: str) -> bool:
        """True the first time this session reads an id, False for the same id again."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (item_id,))
            return cur.rowcount == 1

    def claim(self, key: str) -> bool:
        """True if no input of this session sent content with this key to the model before."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO sent VALUES (?)", (key,))
            return cur.rowcount == 1

    # -- counts ---------------------------------------------------------------------------------------
    def shards(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM shards")}

    def rows_in_shards(self) -> int:
        """Records written in all shards; more than `count()` when some ids were retried."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(rows), 0) FROM shards").fetchone()[0]

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

    def errors_by_kind(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {KIND_SQL}, COUNT(*) FROM items WHERE status = 'error' GROUP BY 1 ORDER BY 1"
            )
            return dict(rows)

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _kind(kind: str | None, reason: str | None) -> str:
    """An error's kind; ledgers written before kinds existed: an engine error is retryable, the rest final."""
    if kind in (RETRYABLE, FINAL):
        return kind
    return RETRYABLE if reason == "engine error" else FINAL
