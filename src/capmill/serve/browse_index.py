"""A disk index over a run folder's shards, so the gallery pages through a run without holding it in memory.

Shards are written whole and renamed when complete, so each is indexed once, when it first appears: per
record its id, shard, position (and byte offset for JSON lines), status and a lower-cased search text. The
index is a SQLite file in the temporary folder, never in the run folder; pages are read back from the shards.
Edits (edits.jsonl) are appended to the index as the file grows. Memory stays bounded by a page, a few
parsed shards and SQLite's page cache, whatever the run's size.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from capmill.records import STATUSES

_SCHEMA = """
CREATE TABLE shards (name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER);
CREATE TABLE rows (id TEXT PRIMARY KEY, seq INTEGER, shard TEXT, pos INTEGER, offset INTEGER, status TEXT, text TEXT);
CREATE INDEX rows_seq ON rows (seq);
CREATE INDEX rows_status ON rows (status, seq);
CREATE TABLE edits (id TEXT PRIMARY KEY, caption TEXT, model_caption TEXT, edited_at REAL);
"""
PARSED_SHARDS = 4  # parsed non-JSON-lines shards kept for reading pages (least recently used go first)


def search_text(row: dict[str, Any]) -> str:
    structured = row.get("structured")
    parts = (row.get("id"), row.get("source"), row.get("caption"), row.get("error"))
    return " ".join(str(x or "") for x in parts).lower() + (" " + json.dumps(structured).lower() if structured else "")


class ShardIndex:
    """id -> (shard, position) for every record of `records_dir`, with status, search text and edits."""

    def __init__(self, records_dir: str, edits_path: str):
        self.records_dir, self.edits_path = records_dir, edits_path
        handle, self.path = tempfile.mkstemp(prefix="capmill-browse-", suffix=".sqlite")
        os.close(handle)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;" + _SCHEMA)
        self._lock = threading.RLock()
        self._seq = 0
        self._edits_offset = 0
        self._parsed: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    # ---------------------------------------------------------------- keeping up with the run

    def refresh(self) -> None:
        """Index shards that appeared (or changed) since the last call, and edits appended since."""
        from capmill.run.runfolder import SHARD_NAME

        names = sorted(n for n in os.listdir(self.records_dir) if SHARD_NAME.match(n))
        with self._lock:
            known = {n: (s, m) for n, s, m in self._db.execute("SELECT name, size, mtime_ns FROM shards")}
            for name in names:
                stat = os.stat(os.path.join(self.records_dir, name))
                if known.get(name) != (stat.st_size, stat.st_mtime_ns):
                    self._index_shard(name, stat)
            self._read_new_edits()

    def _index_shard(self, name: str, stat: os.stat_result) -> None:
        self._db.execute("BEGIN")
        self._db.execute("DELETE FROM rows WHERE shard = ?", (name,))
        self._parsed.pop(name, None)
        for pos, (offset, row) in enumerate(_read_rows(os.path.join(self.records_dir, name))):
            self._seq += 1
            self._db.execute(
                "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.get("id"), self._seq, name, pos, offset, row.get("status", "error"), search_text(row)),
            )
        self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)", (name, stat.st_size, stat.st_mtime_ns))
        self._db.execute("COMMIT")

    def _read_new_edits(self) -> None:
        if not os.path.exists(self.edits_path):
            return
        with open(self.edits_path, "rb") as handle:
            handle.seek(self._edits_offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written: read it next time
                self._edits_offset += len(line)
                try:
                    edit = json.loads(line)
                    values = (edit["id"], edit["caption"], edit.get("model_caption"), edit.get("edited_at"))
                except (ValueError, KeyError, TypeError):
                    continue  # a half-written line from a crash: the edit before it stands
                self._db.execute("INSERT OR REPLACE INTO edits VALUES (?, ?, ?, ?)", values)

    # ---------------------------------------------------------------- reading

    def counts(self) -> dict[str, int]:
        with self._lock:
            by = dict(self._db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status").fetchall())
            edited = self._db.execute("SELECT COUNT(*) FROM edits JOIN rows USING (id)").fetchone()[0]
        return {**{s: by.get(s, 0) for s in STATUSES}, "edited": edited}

    def page(self, status: str | None, q: str | None, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many match, the records of this page, edits attached under 'edit')."""
        where, params = _filter(status, q)
        with self._lock:
            matched = self._db.execute(f"SELECT COUNT(*) FROM rows LEFT JOIN edits USING (id) {where}", params)
            matched = matched.fetchone()[0]
            found = self._db.execute(
                f"SELECT rows.id, shard, pos, offset FROM rows LEFT JOIN edits USING (id) {where} "
                "ORDER BY seq LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return matched, [self._load(*hit) for hit in found]

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._db.execute("SELECT id, shard, pos, offset FROM rows WHERE id = ?", (record_id,)).fetchone()
            return self._load(*hit) if hit else None

    def each(self, status: str | None, q: str | None, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """Every matching record in run order, read a chunk at a time."""
        offset = 0
        while True:
            _, rows = self.page(status, q, offset, chunk)
            yield from rows
            if len(rows) < chunk:
                return
            offset += chunk

    def edit(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._db.execute("SELECT caption, model_caption, edited_at FROM edits WHERE id = ?", (record_id,))
            row = hit.fetchone()
        return (
            None if row is None else {"id": record_id, "caption": row[0], "model_caption": row[1], "edited_at": row[2]}
        )

    def _load(self, record_id: str, shard: str, pos: int, offset: int | None) -> dict[str, Any]:
        path = os.path.join(self.records_dir, shard)
        if offset is not None and offset >= 0:
            with open(path, "rb") as handle:
                handle.seek(offset)
                row = json.loads(handle.readline())
        else:
            if shard not in self._parsed:
                self._parsed[shard] = [r for _, r in _read_rows(path)]
                while len(self._parsed) > PARSED_SHARDS:
                    self._parsed.popitem(last=False)
            self._parsed.move_to_end(shard)
            row = dict(self._parsed[shard][pos])
        row["edit"] = self.edit(record_id)
        return row

    def close(self) -> None:
        with self._lock:
            self._db.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _filter(status: str | None, q: str | None) -> tuple[str, tuple[Any, ...]]:
    clauses, params = [], []
    if status == "edited":
        clauses.append("edits.id IS NOT NULL")
    elif status:
        clauses.append("rows.status = ?")
        params.append(status)
    if q:
        clauses.append("(rows.text LIKE ? ESCAPE '\\' OR LOWER(COALESCE(edits.caption, '')) LIKE ? ESCAPE '\\')")
        needle = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params += [needle, needle]
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)


def _read_rows(path: str) -> Iterator[tuple[int | None, dict[str, Any]]]:
    """(byte offset for JSON lines else None, record dict) for each record of a shard."""
    if path.endswith(".jsonl"):
        with open(path, "rb") as handle:
            offset = 0
            for line in handle:
                if line.strip():
                    yield offset, json.loads(line)
                offset += len(line)
        return
    from capmill.run.runfolder import read_shard

    for record in read_shard(path):
        yield None, record.to_dict()
