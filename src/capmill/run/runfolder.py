"""A run folder: manifest, record shards, ledger, summary. Exactly once across crashes and reruns.

Layout: `manifest.json`, `records/part-00000.<ext>` (shards), `ledger.sqlite`, `summary.json`, and for the
`hf` format `dataset/` (a `save_to_disk` folder). A shard is written as `records/.part-N.<ext>.tmp`, fsynced and
renamed; only then do its sidecar files get written and its items enter the ledger. On opening, a renamed
shard missing from the ledger (a crash right after the rename) is entered; temporary files are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from capmill import __version__
from capmill.data.sinks import SINKS, Sink
from capmill.errors import ConfigError, RunConflictError
from capmill.records import Record, stable_hash
from capmill.run.ledger import Entry, Ledger

# --format -> (shard sink, shard extension, per-shard export, final export)
FORMATS: dict[str, tuple[str, str, str | None, str | None]] = {
    "jsonl": ("jsonl", ".jsonl", None, None),
    "parquet": ("parquet", ".parquet", None, None),
    "webdataset": ("webdataset", ".tar", None, None),
    "sidecar": ("jsonl", ".jsonl", "sidecar", None),
    "hf": ("parquet", ".parquet", None, "hf"),
}
SHARD_NAME = re.compile(r"^part-(\d{5,})\.(jsonl|parquet|tar)$")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class _Pending:
    name: str
    tmp: str
    sink: Sink
    entries: list[Entry] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)  # kept only when a per-shard export needs them


class RunFolder:
    """Opens (or creates) a run folder for one configuration; `add` records, `close` commits the last shard."""

    def __init__(
        self,
        path: str,
        config: dict[str, Any],
        *,
        fmt: str = "jsonl",
        shard_size: int = 1000,
        sources: Any = None,
        sidecar: dict[str, Any] | None = None,
    ):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        if shard_size < 1:
            raise ConfigError("--shard-size must be at least 1")
        self.path, self.fmt, self.shard_size = path, fmt, shard_size
        self.sink_name, self.ext, self.shard_export, self.final_export = FORMATS[fmt]
        self.config = {**config, "format": fmt}
        self.settings_hash = stable_hash(self.config)
        self.records_dir = os.path.join(path, "records")
        os.makedirs(self.records_dir, exist_ok=True)
        self._lock_handle = open(os.path.join(path, ".lock"), "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_handle.close()
            raise RunConflictError(f"{path}: another capmill run is using this run folder") from exc
        self._open_manifest(sources)
        self.ledger = Ledger(os.path.join(path, "ledger.sqlite"))
        self.sidecar_sink = SINKS.get("sidecar")("", **(sidecar or {})) if self.shard_export == "sidecar" else None
        self._recover()
        self._next = 1 + max((self._index(n) for n in self.shard_names()), default=-1)
        self._pending: _Pending | None = None
        self.wants_media = SINKS.get(self.sink_name).wants_media

    # -- manifest and recovery -------------------------------------------------------------------------
    def _open_manifest(self, sources: Any) -> None:
        path = os.path.join(self.path, "manifest.json")
        session = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sources": sources}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                manifest = json.load(handle)
            old = manifest.get("config", {})
            if old != json.loads(json.dumps(self.config)):
                changed = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                raise RunConflictError(
                    f"{self.path} holds a run with a different configuration (differs in: {', '.join(changed)}); "
                    "use another --run-dir, or the same settings to resume"
                )
            manifest.setdefault("sessions", []).append(session)
        else:
            manifest = {
                "capmill_version": __version__,
                "config": self.config,
                "settings_hash": self.settings_hash,
                "sessions": [session],
            }
        write_json_atomic(path, manifest)

    def _recover(self) -> None:
        for name in os.listdir(self.records_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(self.records_dir, name))  # a shard that was never completed
        known = self.ledger.shards()
        for name in self.shard_names():
            if name not in known:  # renamed but not entered: the crash came between the two steps
                records = list(read_shard(os.path.join(self.records_dir, name)))
                entries = [Entry(r.id, self.key_for(r.content_hash), r.status, _reason(r), name) for r in records]
                self._export_shard(records)
                self.ledger.commit_shard(name, entries)

    @staticmethod
    def _index(name: str) -> int:
        match = SHARD_NAME.match(name)
        return int(match.group(1)) if match else -1

    def shard_names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.records_dir) if SHARD_NAME.match(n))

    def key_for(self, content_hash: str) -> str:
        return f"{content_hash}:{self.settings_hash}"

    # -- writing ---------------------------------------------------------------------------------------
    def is_done(self, item_id: str) -> bool:
        return self.ledger.has_id(item_id)

    def add(self, record: Record, media: bytes | None = None, reason: str | None = None) -> None:
        """Buffer one record into the open shard; the shard is committed when it holds `shard_size` records."""
        if self._pending is None:
            name = f"part-{self._next:05d}{self.ext}"
            self._next += 1
            tmp = os.path.join(self.records_dir, f".{name}.tmp")
            self._pending = _Pending(name, tmp, SINKS.get(self.sink_name)(tmp))
        pending = self._pending
        pending.sink.write(record, media if self.wants_media else None)
        key = self.key_for(record.content_hash)
        pending.entries.append(Entry(record.id, key, record.status, reason or _reason(record), pending.name))
        if self.shard_export:
            pending.records.append(record)
        if len(pending.entries) >= self.shard_size:
            self.commit()

    def commit(self) -> str | None:
        """Close, fsync and rename the open shard, write its exports, then enter it in the ledger."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.sink.close()
        _fsync_path(pending.tmp)
        final = os.path.join(self.records_dir, pending.name)
        os.replace(pending.tmp, final)
        _fsync_path(self.records_dir)
        self._export_shard(pending.records)
        self.ledger.commit_shard(pending.name, pending.entries)
        return pending.name

    def _export_shard(self, records: list[Record]) -> None:
        if self.sidecar_sink is not None:
            for record in records:
                self.sidecar_sink.write(record)

    def close(self) -> None:
        """Commit the last shard and write the final export (the `hf` dataset folder)."""
        self.commit()
        if self.final_export == "hf":
            from capmill.data.sinks.hf import save_parquet_as_hf

            shards = [os.path.join(self.records_dir, n) for n in self.shard_names()]
            save_parquet_as_hf(shards, os.path.join(self.path, "dataset"))

    def release(self) -> None:
        """Let go of the ledger and the folder lock (after close, or after a failure)."""
        self.ledger.close()
        if not self._lock_handle.closed:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()

    # -- reading ---------------------------------------------------------------------------------------
    def find_record(self, key: str, include_errors: bool = False) -> Record | None:
        """A committed record with this key, read back from its shard (for a duplicate input)."""
        entry = self.ledger.find_key(key, include_errors)
        if entry is None:
            return None
        for record in read_shard(os.path.join(self.records_dir, entry.shard)):
            if record.id == entry.id:
                return record
        return None

    def export_single_file(self, target: str) -> None:
        """Join the shards into one file (for `--out FILE`), written under a temporary name and renamed."""
        tmp = f"{target}.capmill-tmp"
        sink = SINKS.get(self.sink_name)(tmp)
        with sink:
            for record in read_records(self.path):
                sink.write(record)
        os.replace(tmp, target)


def _reason(record: Record) -> str | None:
    """The error reason of a record: the text before the first colon of its error, without the input's name."""
    if record.status != "error" or not record.error:
        return None
    text = record.error
    if record.source and text.startswith(record.source + ": "):
        text = text[len(record.source) + 2 :]
    return text.split(":", 1)[0].split(" (", 1)[0].strip() or "error"


def read_shard(path: str) -> Iterator[Record]:
    """The records of one shard, whatever its format."""
    from capmill.data.sinks.base import row_to_record

    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield Record.from_dict(json.loads(line))
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield row_to_record(row)
    elif path.endswith(".tar"):
        import tarfile

        with tarfile.open(path, "r") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(".json"):
                    handle = tar.extractfile(info)
                    if handle is not None:
                        yield Record.from_dict(json.loads(handle.read()))
    else:
        raise ConfigError(f"{path}: not a capmill shard")


def read_records(run_dir: str) -> Iterator[Record]:
    """Every record of a run folder, shard by shard in order (complete shards only: they are renamed whole)."""
    records_dir = os.path.join(run_dir, "records")
    if not os.path.isdir(records_dir):
        raise ConfigError(f"{run_dir}: not a capmill run folder (no records/)")
    for name in sorted(n for n in os.listdir(records_dir) if SHARD_NAME.match(n)):
        yield from read_shard(os.path.join(records_dir, name))
