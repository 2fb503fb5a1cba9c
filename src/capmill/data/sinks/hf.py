"""A Hugging Face dataset saved to disk (`datasets.load_from_disk` opens it), with the record columns."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

from capmill.data.sinks.parquet import ParquetSink
from capmill.errors import MissingDependencyError
from capmill.records import Record


def save_parquet_as_hf(parquet_files: Sequence[str], path: str) -> None:
    """Parquet shards -> `save_to_disk` folder, built under a temporary name and renamed into place."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("datasets", "datasets", "the Hugging Face dataset output") from exc
    tmp, cache = f"{path}.capmill-tmp", f"{path}.capmill-cache"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if parquet_files:  # through an Arrow cache on disk beside the target: a large run is never all in memory
            ds = datasets.Dataset.from_parquet(list(parquet_files), cache_dir=cache)
        else:
            from capmill.data.sinks.parquet import record_schema

            ds = datasets.Dataset(record_schema().empty_table())
        ds.save_to_disk(tmp)
        del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


class HFDatasetSink(ParquetSink):
    """Buffers rows in a Parquet file beside `path`, then saves them as a dataset folder at close."""

    name = "hf"
    extension = ""

    def __init__(self, path: str, **options: Any):
        self.target = path
        super().__init__(f"{path}.rows.parquet", **options)

    def write(self, record: Record, media: bytes | None = None) -> None:
        super().write(record, media)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        save_parquet_as_hf([self.path], self.target)
        os.remove(self.path)
