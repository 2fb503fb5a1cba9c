"""Reading a run folder's records: one shard, one row of a shard (by position), or every current record once."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator

from capmill.errors import ConfigError
from capmill.records import Record
from capmill.run.ledger import Ledger

SHARD_NAME = re.compile(r"^part-(\d{5,})\.(jsonl|parquet|tar)$")


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


def read_shard_row(path: str, pos: int) -> Record | None:
    """The record at position `pos` of a shard: JSONL lines are skipped unparsed, Parquet reads one row group."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        from capmill.data.sinks.base import row_to_record

        pf = pq.ParquetFile(path)
        for group in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(group).num_rows
            if pos < rows:
                return row_to_record(pf.read_row_group(group).slice(pos, 1).to_pylist()[0])
            pos -= rows
        return None
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            for line in itertools.islice((x for x in handle if x.strip()), pos, pos + 1):
                return Record.from_dict(json.loads(line))
        return None
    return next(itertools.islice(read_shard(path), pos, pos + 1), None)


def read_records(run_dir: str) -> Iterator[Record]:
    """Every current record of a run folder, shard by shard in order, each id once.

    Complete shards only (they are renamed whole). An id that was retried (a retryable error redone) has its
    newest record in a later shard; the ledger says which shard holds each id's current record, so the older
    one is skipped. Memory: one shard's ids at a time."""
    records_dir = os.path.join(run_dir, "records")
    if not os.path.isdir(records_dir):
        raise ConfigError(f"{run_dir}: not a capmill run folder (no records/)")
    names = sorted(n for n in os.listdir(records_dir) if SHARD_NAME.match(n))
    ledger_path = os.path.join(run_dir, "ledger.sqlite")
    if not os.path.exists(ledger_path):
        for name in names:
            yield from read_shard(os.path.join(records_dir, name))
        return
    ledger = Ledger(ledger_path, session=False)
    try:
        known = ledger.shards()
        # a shard renamed but not yet entered (a crash between the two steps) is the newest: its ids win
        newest: set[str] = set()
        for name in names:
            if name not in known:
                newest.update(r.id for r in read_shard(os.path.join(records_dir, name)))
        for name in names:
            path = os.path.join(records_dir, name)
            if name not in known:
                yield from read_shard(path)
                continue
            current = ledger.ids_in_shard(name)
            for record in read_shard(path):
                if record.id in current and record.id not in newest:
                    yield record
    finally:
        ledger.close()
