"""Parquet (zstd): the record fields as columns; nested fields as JSON text so every shard shares one schema."""

from __future__ import annotations

from typing import Any

from capmill.data.sinks.base import Sink, record_to_row
from capmill.records import Record

ROW_GROUP = 512


def record_schema() -> Any:
    import pyarrow as pa

    # every Record field is text: scalars are strings or null, nested ones JSON (see sinks.base.JSON_FIELDS)
    return pa.schema([pa.field(name, pa.string()) for name in Record.__dataclass_fields__])


class ParquetSink(Sink):
    name = "parquet"
    extension = ".parquet"

    def __init__(self, path: str, compression: str = "zstd", **options: Any):
        super().__init__(path, **options)
        import pyarrow.parquet as pq

        self._schema = record_schema()
        self._writer = pq.ParquetWriter(path, self._schema, compression=compression)
        self._rows: list[dict[str, Any]] = []
        self._closed = False

    def write(self, record: Record, media: bytes | None = None) -> None:
        self._rows.append(record_to_row(record))
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        if not self._closed:
            self._flush()
            self._writer.close()
            self._closed = True
