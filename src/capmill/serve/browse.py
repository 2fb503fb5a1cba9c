"""The `--browse RUN_DIR` view's logic: a run's records with filters, search, thumbnails, edits and export.

Edits go to `RUN_DIR/edits.jsonl` (append-only, the last edit of an id wins); the run's own records, with the
model's output, are never changed. Export writes the records with edited captions applied and the model's
caption kept beside them.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError
from capmill.records import STATUSES

EDITS_FILE = "edits.jsonl"
THUMB_SIZE = 320
_RELOAD_AFTER_S = 2.0


class BrowseService:
    """Reads a run folder through `capmill.run.runfolder.read_records`, re-reading it as the run grows."""

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"--browse {run_dir}: not a folder")
        self.run_dir = run_dir
        self.edits_path = run_dir / EDITS_FILE
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self._loaded_at = 0.0
        self.load(force=True)

    # ---------------------------------------------------------------- reading

    def load(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < _RELOAD_AFTER_S:
            return
        from capmill.run.runfolder import read_records

        rows = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in read_records(self.run_dir)]
        edits = self._read_edits()
        by_id: dict[str, dict[str, Any]] = {}
        for row in rows:
            edit = edits.get(row["id"])
            row["edit"] = edit
            by_id[row["id"]] = row
        with self._lock:
            self._records = list(by_id.values())
            self._by_id = by_id
            self._loaded_at = time.monotonic()

    def _read_edits(self) -> dict[str, dict[str, Any]]:
        edits: dict[str, dict[str, Any]] = {}
        if self.edits_path.exists():
            with open(self.edits_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        edit = json.loads(line)
                        edits[edit["id"]] = edit
                    except (ValueError, KeyError, TypeError):
                        continue  # a half-written last line from a crash: the edit before it stands
        return edits

    def get(self, record_id: str) -> dict[str, Any] | None:
        self.load()
        return self._by_id.get(record_id)

    def query(
        self, status: str | None = None, q: str | None = None, offset: int = 0, limit: int = 60
    ) -> dict[str, Any]:
        self.load()
        with self._lock:
            records = list(self._records)
        counts = Counter(r.get("status", "error") for r in records)
        counts["edited"] = sum(1 for r in records if r.get("edit"))
        chosen = [r for r in records if _matches(r, status, q)]
        return {
            "run_dir": str(self.run_dir),
            "total": len(records),
            "matched": len(chosen),
            "counts": {s: counts.get(s, 0) for s in (*STATUSES, "edited")},
            "records": [_view(r) for r in chosen[offset : offset + limit]],
        }

    # ---------------------------------------------------------------- edits and export

    def save_edit(self, record_id: str, caption: str) -> dict[str, Any]:
        record = self.get(record_id)
        if record is None:
            raise KeyError(record_id)
        edit = {"id": record_id, "caption": caption, "model_caption": record.get("caption"), "edited_at": time.time()}
        line = json.dumps(edit, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.edits_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            record["edit"] = edit
        return _view(record)

    def export(self, status: str | None = None, q: str | None = None) -> Iterator[str]:
        """JSON lines: each record with `caption` set to the edit (if any), `model_caption` and `edited`."""
        self.load(force=True)
        with self._lock:
            records = list(self._records)
        for record in records:
            if not _matches(record, status, q):
                continue
            row = {k: v for k, v in record.items() if k != "edit"}
            edit = record.get("edit")
            row["model_caption"] = record.get("caption")
            row["edited"] = edit is not None
            if edit is not None:
                row["caption"] = edit["caption"]
            yield json.dumps(row, ensure_ascii=False) + "\n"

    # ---------------------------------------------------------------- images

    def image_path(self, record_id: str) -> Path | None:
        """The local file a record came from, if it is one (thumbnails of tar members, rows and URLs are not kept)."""
        record = self.get(record_id)
        if record is None:
            return None
        for candidate in (record.get("meta", {}).get("path"), record.get("source")):
            if isinstance(candidate, str) and candidate and "://" not in candidate:
                path = Path(candidate)
                if path.is_file():
                    return path
        return None

    def thumbnail(self, record_id: str) -> bytes | None:
        path = self.image_path(record_id)
        if path is None:
            return None
        stat = path.stat()
        return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2048)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            img.thumbnail((THUMB_SIZE, THUMB_SIZE))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=82)
            return out.getvalue()
    except Exception:  # a corrupt image is shown as "no preview", its record says why
        return None


def _matches(record: dict[str, Any], status: str | None, q: str | None) -> bool:
    if status:
        if status == "edited":
            if not record.get("edit"):
                return False
        elif record.get("status") != status:
            return False
    if q:
        needle = q.lower()
        edit = record.get("edit") or {}
        haystack = " ".join(
            str(x or "")
            for x in (
                record.get("id"),
                record.get("source"),
                record.get("caption"),
                edit.get("caption"),
                record.get("error"),
                json.dumps(record.get("structured")) if record.get("structured") else "",
            )
        ).lower()
        if needle not in haystack:
            return False
    return True


def _view(record: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a record."""
    edit = record.get("edit")
    return {
        "id": record.get("id"),
        "source": record.get("source"),
        "status": record.get("status"),
        "caption": record.get("caption"),
        "structured": record.get("structured"),
        "raw": record.get("raw"),
        "error": record.get("error"),
        "notes": record.get("notes") or [],
        "mode": record.get("mode"),
        "profile": record.get("profile"),
        "edited_caption": edit["caption"] if edit else None,
        "edited_at": edit["edited_at"] if edit else None,
    }
