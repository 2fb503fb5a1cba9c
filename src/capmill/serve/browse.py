"""The `--browse RUN_DIR` view's logic: a run's records with filters, search, thumbnails, edits and export.

Records are paged from the run's shards through a disk index (browse_index.py), never all held in memory.

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
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError
from capmill.records import STATUSES
from capmill.serve.browse_index import ShardIndex

EDITS_FILE = "edits.jsonl"
THUMB_SIZE = 320
_RELOAD_AFTER_S = 2.0


class BrowseService:
    """Pages through a run folder from its shards (see ShardIndex), looking for new shards at most every 2 s.

    Images are served by record id only, and only from files under the run's input roots (the folders its
    manifest names as sources, or `extra_roots`) or the run folder itself: a record naming any other file
    (a manifest listing /etc/passwd) has no image.
    """

    def __init__(self, run_dir: Path, extra_roots: list[Path] | None = None):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"--browse {run_dir}: not a folder")
        if not (run_dir / "records").is_dir():
            raise ConfigError(f"--browse {run_dir}: not a capmill run folder (no records/)")
        self.run_dir = run_dir
        self.edits_path = run_dir / EDITS_FILE
        self.roots = [run_dir.resolve(), *(Path(r).resolve() for r in extra_roots or [])]
        self.roots += input_roots(run_dir)
        self._lock = threading.Lock()
        self.index = ShardIndex(str(run_dir / "records"), str(self.edits_path))
        self._loaded_at = 0.0
        self.load(force=True)

    # ---------------------------------------------------------------- reading

    def load(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < _RELOAD_AFTER_S:
            return
        self.index.refresh()
        self._loaded_at = time.monotonic()

    def get(self, record_id: str) -> dict[str, Any] | None:
        self.load()
        return self.index.get(record_id)

    def query(
        self, status: str | None = None, q: str | None = None, offset: int = 0, limit: int = 60
    ) -> dict[str, Any]:
        self.load()
        counts = self.index.counts()
        matched, records = self.index.page(status, q, offset, limit)
        return {
            "run_dir": str(self.run_dir),
            "total": sum(counts[s] for s in STATUSES),
            "matched": matched,
            "counts": counts,
            "records": [_view(r) for r in records],
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
            self.index.refresh()
        record["edit"] = edit
        return _view(record)

    def export(self, status: str | None = None, q: str | None = None) -> Iterator[str]:
        """JSON lines: each record with `caption` set to the edit (if any), `model_caption` and `edited`."""
        self.load(force=True)
        for record in self.index.each(status, q):
            row = {k: v for k, v in record.items() if k != "edit"}
            edit = record.get("edit")
            row["model_caption"] = record.get("caption")
            row["edited"] = edit is not None
            if edit is not None:
                row["caption"] = edit["caption"]
            yield json.dumps(row, ensure_ascii=False) + "\n"

    def close(self) -> None:
        self.index.close()

    # ---------------------------------------------------------------- images

    def image_path(self, record_id: str) -> Path | None:
        """The local file a record came from, if it is one and lies under the run's roots (thumbnails of tar
        members, rows and URLs are not kept)."""
        record = self.get(record_id)
        if record is None:
            return None
        for candidate in ((record.get("meta") or {}).get("path"), record.get("source")):
            if isinstance(candidate, str) and candidate and "://" not in candidate:
                path = Path(candidate)
                if not path.is_absolute():
                    continue  # relative to nothing known: not served
                resolved = path.resolve()
                if resolved.is_file() and any(resolved.is_relative_to(root) for root in self.roots):
                    return resolved
        return None

    def thumbnail(self, record_id: str) -> bytes | None:
        path = self.image_path(record_id)
        if path is None:
            return None
        stat = path.stat()
        return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size)


def input_roots(run_dir: Path) -> list[Path]:
    """The folders a run read its inputs from, as its manifest names its sources: a folder source is its own
    root; a list, table or dataset file roots the folder it sits in (where its relative paths point)."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    roots: list[Path] = []

    def visit(source: Any) -> None:
        if not isinstance(source, dict):
            return
        for inner in source.get("sources") or []:
            visit(inner)
        spec, kind = source.get("spec"), source.get("kind")
        if not isinstance(spec, str) or "://" in spec or kind == "hf-hub":
            return
        if kind == "glob":
            spec = spec.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
            path = Path(spec if spec.endswith(os.sep) else os.path.dirname(spec) or ".")
        else:
            path = Path(spec)
            if kind != "folder" and not path.is_dir():
                path = path.parent if kind != "file" else path
        roots.append(path.resolve())

    for session in manifest.get("sessions") or []:
        visit(session.get("sources"))
    return list(dict.fromkeys(roots))


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
