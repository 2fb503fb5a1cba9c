"""Caption results to evaluate: capmill run folders, or JSONL files of records (or of plain {"id", "caption"} rows)."""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError
from capmill.records import STATUSES, Record

log = logging.getLogger(__name__)

_DEFAULTS: dict[str, Any] = {
    "content_hash": "",
    "profile": "",
    "engine": "",
    "model": "",
    "prompt_hash": "",
    "decoding": {},
}


@dataclass
class Run:
    """One set of results under a display name, with the lines that could not be read."""

    name: str
    path: str
    records: list[Record]
    problems: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        first = self.records[0] if self.records else None
        return {
            "name": self.name,
            "path": self.path,
            "records": len(self.records),
            "unreadable_lines": len(self.problems),
            "profile": first.profile if first else "",
            "model": first.model if first else "",
            "engine": first.engine if first else "",
        }


def record_from_row(row: dict[str, Any]) -> Record:
    """A Record from a full capmill record or a minimal {"id", "caption"} row; missing fields get neutral values."""
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    rid = row.get("id", row.get("image_id"))
    if rid is None:
        raise ValueError("no 'id'")
    full = dict(_DEFAULTS)
    full.update(row)
    full["id"] = str(rid)
    full.setdefault("source", str(rid))
    if "status" not in row:
        full["status"] = "ok" if isinstance(row.get("caption"), str) else "error"
    if full["status"] not in STATUSES:
        raise ValueError(f"unknown status {full['status']!r}")
    if full.get("caption") is not None and not isinstance(full["caption"], str):
        raise ValueError("'caption' is not a string")
    return Record.from_dict(full)


def read_jsonl_records(path: Path, problems: list[str]) -> list[Record]:
    """Records of one JSONL file; an unreadable line becomes a problem note and the rest are still read."""
    records = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(record_from_row(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                problems.append(f"{path}:{n}: {exc}")
    return records


def _read_run_folder(path: Path, problems: list[str]) -> list[Record]:
    # The data package owns the run-folder layout; use its reader when present, else read every JSONL shard.
    try:
        runfolder = importlib.import_module("capmill.run.runfolder")
    except ModuleNotFoundError:
        runfolder = None
    if runfolder is not None and hasattr(runfolder, "read_records") and (path / "records").is_dir():
        return [r if isinstance(r, Record) else record_from_row(r) for r in runfolder.read_records(str(path))]
    files = sorted(p for p in path.rglob("*.jsonl") if not p.name.startswith((".", "_")))
    if not files:
        raise ConfigError(f"results {path}: folder holds no .jsonl files")
    records: list[Record] = []
    for f in files:
        records.extend(read_jsonl_records(f, problems))
    return records


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Load one run from a run folder or a JSONL file. Later duplicates of an id replace earlier ones."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"results {path}: not found")
    problems: list[str] = []
    records = _read_run_folder(path, problems) if path.is_dir() else read_jsonl_records(path, problems)
    by_id: dict[str, Record] = {}
    for r in records:
        by_id[r.id] = r
    if not by_id:
        raise ConfigError(f"results {path}: no readable records" + (f" ({problems[0]})" if problems else ""))
    for p in problems[:5]:
        log.warning("skipped unreadable line %s", p)
    return Run(
        name=name or (path.name if path.is_dir() else path.stem),
        path=str(path),
        records=list(by_id.values()),
        problems=problems,
    )


def load_runs(paths: list[str | Path], names: list[str] | None = None) -> list[Run]:
    """Load several runs; display names are made unique (run, run-2, ...)."""
    runs = []
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        run = load_run(p, names[i] if names and i < len(names) else None)
        base = run.name
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            run.name = f"{base}-{seen[base]}"
        runs.append(run)
    return runs
