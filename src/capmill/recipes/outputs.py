"""A stage's outputs by input id (an index beside its run folder), and the recipe's joined records.

`Outputs` indexes the committed shards of one stage's run folder in `outputs.sqlite` (only shards it has not seen,
so a resumed run reads little), so later stages look an item's output up without holding the stage in memory.
`join` writes the recipe's records: the output stage's record of each input, with every stage's output under
`stages`, a prompt set's captions under `captions` and a tagger stage's tags under `tags`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from capmill.records import Record

SUMMARY_FIELDS = ("caption", "structured", "status", "error", "grounding", "notes", "model", "profile", "engine")


class Outputs:
    def __init__(self, stage_dir: str):
        self.stage_dir = stage_dir
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(self.stage_dir, exist_ok=True)
            self._db = sqlite3.connect(
                os.path.join(self.stage_dir, "outputs.sqlite"),
                check_same_thread=False,
                isolation_level=None,
                timeout=60,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                "CREATE TABLE IF NOT EXISTS outputs (id TEXT, ord INTEGER, variant TEXT, record TEXT, "
                "PRIMARY KEY (id, variant));"
                "CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY);"
            )
        return self._db

    def refresh(self) -> int:
        """Index the stage's committed shards not indexed yet; returns how many records were added."""
        from capmill.run.runfolder import SHARD_NAME, read_shard

        records_dir = os.path.join(self.stage_dir, "records")
        if not os.path.isdir(records_dir):
            return 0
        added = 0
        with self._lock:
            db = self._conn()
            known = {r[0] for r in db.execute("SELECT name FROM shards")}
            for name in sorted(n for n in os.listdir(records_dir) if SHARD_NAME.match(n) and n not in known):
                rows = []
                for record in read_shard(os.path.join(records_dir, name)):
                    recipe = recipe_meta(record)
                    base = recipe.get("id") or record.id
                    rows.append((base, int(recipe.get("order", 0)), recipe.get("variant") or "", _dump(record)))
                db.execute("BEGIN IMMEDIATE")  # another reader of the same stage may index it at the same time
                try:
                    if db.execute("SELECT 1 FROM shards WHERE name = ?", (name,)).fetchone() is None:
                        db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)", rows)
                        db.execute("INSERT INTO shards VALUES (?)", (name,))
                        added += len(rows)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        return added

    def records(self, item_id: str) -> list[Record]:
        """The stage's records of one input (several for a prompt set), in the set's order."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT record FROM outputs WHERE id = ? ORDER BY ord, variant", (item_id,))
                .fetchall()
            )
        return [Record.from_dict(json.loads(r[0])) for r in rows]

    def get(self, item_id: str) -> dict[str, Any] | None:
        """One input's output as templates and records see it: caption, structured, status, ... (the first
        variant's for a prompt set, with every variant's caption under `captions`)."""
        records = self.records(item_id)
        if not records:
            return None
        return summarize(records)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def summarize(records: list[Record]) -> dict[str, Any]:
    first = records[0]
    out = {name: getattr(first, name) for name in SUMMARY_FIELDS}
    if first.tags is not None:  # a tagger stage: its tags and scores ({stages.NAME.rating}, ...)
        out["tags"] = first.tags
    variant = recipe_meta(first).get("variant")
    if variant is not None:
        out["variant"] = variant
    if len(records) > 1 or variant is not None:
        out["captions"] = {recipe_meta(r).get("variant") or str(i): r.caption for i, r in enumerate(records) if r.ok}
    return out


def _failed(records: list[Record]) -> bool:
    return bool(records) and not records[0].ok


def recipe_meta(record: Record) -> dict[str, Any]:
    """Which stage, input and variant a stage record is of (a duplicate's copy keeps them as flat meta keys)."""
    recipe = record.meta.get("recipe")
    if isinstance(recipe, dict):
        return recipe
    keys = {"recipe_id": "id", "recipe_variant": "variant", "recipe_order": "order", "recipe_prompt": "prompt"}
    return {name: record.meta[key] for key, name in keys.items() if key in record.meta}


def _dump(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)


def joined(ids: Iterator[str], stages: dict[str, Outputs], output: str) -> Iterator[Record]:
    """The recipe's record of each input, in input order: the output stage's, or (when a stage before it failed for
    the input, so later stages left it out) the failed stage's record; none for an input no stage has reached."""
    for item_id in ids:
        records = stages[output].records(item_id)
        if not records:
            records = next((found for name in stages if _failed(found := stages[name].records(item_id))), [])
        if not records:
            continue  # the run stopped before this input reached the stages
        summaries = {}
        for name, outputs in stages.items():
            found = outputs.get(item_id)
            if found is not None:
                summaries[name] = found
        first = records[0]
        meta = {k: v for k, v in first.meta.items() if not k.startswith("recipe") and k not in ("path", "row")}
        captions = summaries.get(output, {}).get("captions")
        # the record's tags: the output stage's, else the first tagger stage's (sidecar `tags`, embedded keywords)
        tags = first.tags or next((s["tags"] for s in summaries.values() if s.get("tags")), None)
        fields = {**first.to_dict(), "id": item_id, "meta": meta, "stages": summaries, "captions": captions}
        yield Record(**{**fields, "tags": tags})
