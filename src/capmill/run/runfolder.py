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
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from capmill import __version__
from capmill.data.sinks import SINKS, Sink
from capmill.errors import ConfigError, RunConflictError
from capmill.records import Record, stable_hash
from capmill.run.ledger import Entry, Ledger
from capmill.run.shards import SHARD_NAME, read_records, read_shard, read_shard_row

__all__ = ["FORMATS", "SHARD_NAME", "RunFolder", "read_records", "read_shard", "read_shard_row", "write_json_atomic"]

# --format -> (shard sink, shard extension, per-shard export, final export)
FORMATS: dict[str, tuple[str, str, str | None, str | None]] = {
    "jsonl": ("jsonl", ".jsonl", None, None),
    "parquet": ("parquet", ".parquet", None, None),
    "webdataset": ("webdataset", ".tar", None, None),
    "sidecar": ("jsonl", ".jsonl", "sidecar", None),
    "hf": ("parquet", ".parquet", None, "hf"),
}


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
    opened: float = field(default_factory=time.monotonic)


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
        retry_errors: bool = False,
        commit_seconds: float = 30.0,
        versions: dict[str, str | None] | None = None,
    ):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        if shard_size < 1:
            raise ConfigError("--shard-size must be at least 1")
        self.path, self.fmt, self.shard_size = path, fmt, shard_size
        self.commit_seconds = commit_seconds  # the open shard is committed at least this often
        self.notices: list[str] = []  # things the user should know (a library version changed since the last run)
        self._write_lock = threading.RLock()  # add / commit from the writer and from a stopping run never overlap
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
        self.ledger = Ledger(os.path.join(path, "ledger.sqlite"), retry_errors=retry_errors)
        self.sidecar_sink = SINKS.get("sidecar")("", **(sidecar or {})) if self.shard_export == "sidecar" else None
        try:
            self._open_manifest(sources, versions or {})
        except BaseException:
            self.release()
            raise
        self._recover()
        self._next = 1 + max((self._index(n) for n in self.shard_names()), default=-1)
        self._pending: _Pending | None = None
        self.wants_media = SINKS.get(self.sink_name).wants_media

    # -- manifest and recovery -------------------------------------------------------------------------
    def _open_manifest(self, sources: Any, versions: dict[str, str | None]) -> None:
        """Create the manifest, or check that the folder's configuration is this one.

        A folder that holds no committed record takes the new configuration (a start that failed before
        captioning anything does not bind the folder); one that holds records refuses a different one."""
        path = os.path.join(self.path, "manifest.json")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        session = {"started": now, "sources": sources, "versions": versions}
        config = json.loads(json.dumps(self.config))
        manifest: dict[str, Any] | None = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                manifest = json.load(handle)
            old = manifest.get("config", {})
            held = self.ledger.count() + len(self.shard_names())
            if old != config and held:
                raise RunConflictError(self._conflict_message(old, config))
            if old != config:
                manifest = None  # nothing committed under the old configuration: start over with this one
        if manifest is None:
            manifest = {"capmill_version": __version__, "config": self.config, "settings_hash": self.settings_hash,
                        "versions": versions, "sessions": [session]}  # fmt: skip
        else:
            before = (manifest.get("sessions") or [{}])[-1].get("versions") or manifest.get("versions") or {}
            changed = [
                f"{name} {before.get(name)} -> {version}"
                for name, version in versions.items()
                if name in before and before.get(name) != version
            ]
            if changed:
                self.notices.append(
                    f"{self.path}: library versions changed since the last session ({', '.join(changed)}); "
                    "captions made before and after may differ slightly"
                )
            manifest.setdefault("sessions", []).append(session)
        write_json_atomic(path, manifest)

    def _conflict_message(self, old: dict[str, Any], new: dict[str, Any]) -> str:
        records = self.ledger.count()
        lines = [f"  {key}: {_short(a)} (in the folder) -> {_short(b)} (now)" for key, a, b in _differences(old, new)]
        quoted = shlex.quote(self.path)
        return (
            f"{self.path} holds {records} record(s) made with a different configuration:\n" + "\n".join(lines) + "\n"
            f"To resume, run with the folder's settings. To start fresh, remove the folder (rm -rf {quoted}) "
            "or choose another --run-dir."
        )

    def _recover(self) -> None:
        for name in os.listdir(self.records_dir):
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(self.records_dir, name))  # a shard that was never completed
        known = self.ledger.shards()
        for name in self.shard_names():
            if name not in known:  # renamed but not entered: the crash came between the two steps
                records = list(read_shard(os.path.join(self.records_dir, name)))
                entries = [self._entry(r, None, name, pos) for pos, r in enumerate(records)]
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
        """Whether this id needs no more work (an error record that may pass on a retry does not count)."""
        return self.ledger.is_done(item_id)

    def _entry(self, record: Record, reason: str | None, shard: str, pos: int | None = None) -> Entry:
        kind = (record.error_kind or "final") if record.status == "error" else None
        key = self.key_for(record.content_hash)
        return Entry(record.id, key, record.status, reason or _reason(record), shard, kind, pos)

    def add(self, record: Record, media: bytes | None = None, reason: str | None = None) -> None:
        """Buffer one record into the open shard; the shard is committed when it holds `shard_size` records, or
        when it has been open `commit_seconds`."""
        with self._write_lock:
            if self._pending is None:
                name = f"part-{self._next:05d}{self.ext}"
                self._next += 1
                tmp = os.path.join(self.records_dir, f".{name}.tmp")
                self._pending = _Pending(name, tmp, SINKS.get(self.sink_name)(tmp))
            pending = self._pending
            pending.sink.write(record, media if self.wants_media else None)
            pending.entries.append(self._entry(record, reason, pending.name, len(pending.entries)))
            if self.shard_export:
                pending.records.append(record)
            if len(pending.entries) >= self.shard_size:
                self.commit()
            else:
                self.commit_if_due()

    def commit_if_due(self) -> None:
        """Commit the open shard if it has been open `commit_seconds` (called as records come, and when idle)."""
        with self._write_lock:
            pending = self._pending
            if pending is not None and time.monotonic() - pending.opened >= self.commit_seconds:
                self.commit()

    def commit(self) -> str | None:
        """Close, fsync and rename the open shard, write its exports, then enter it in the ledger."""
        with self._write_lock:
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
            if self.ledger.count() != self.ledger.rows_in_shards():
                # some ids were retried: their old records are superseded; export only the current ones
                tmp = os.path.join(self.path, ".current.parquet.tmp")
                with SINKS.get("parquet")(tmp) as sink:
                    for record in read_records(self.path):
                        sink.write(record)
                shards = [tmp]
            save_parquet_as_hf(shards, os.path.join(self.path, "dataset"))
            if shards and shards[0].endswith(".tmp"):
                os.remove(shards[0])

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
        path = os.path.join(self.records_dir, entry.shard)
        if entry.pos is not None:  # straight to its row (its row group, for Parquet)
            record = read_shard_row(path, entry.pos)
            if record is not None and record.id == entry.id:
                return record
        for record in read_shard(path):  # a ledger written before positions were kept
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


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs between two configurations."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _short(value: Any, limit: int = 120) -> str:
    text = "(none)" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
