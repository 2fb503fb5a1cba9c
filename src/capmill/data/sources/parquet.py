"""Parquet and Arrow files: an image bytes column (or {bytes, path} struct), a path/URL column, or text."""

from __future__ import annotations

import os
from collections.abc import Iterator

from capmill.data.sources.base import Source, error_item, input_name
from capmill.data.sources.tabular import RowReader
from capmill.records import Item

BATCH_ROWS = 64  # rows decoded from Parquet at a time: memory stays flat whatever the file size


class ParquetSource(Source):
    """Row by row, batch by batch; a row group that cannot be read becomes one error record per row."""

    name = "parquet"

    def count(self) -> int | None:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.spec).metadata.num_rows
        except Exception:  # noqa: BLE001 - a broken file is counted while reading it
            return None

    def __iter__(self) -> Iterator[Item]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.spec)
        except Exception as exc:  # noqa: BLE001 - a broken footer: the whole file is one bad input
            yield error_item(self.spec, os.path.abspath(self.spec), "corrupt parquet", str(exc)[:200])
            return
        reader = RowReader(
            pf.schema_arrow.names,
            self.options,
            self.spec,
            os.path.dirname(os.path.abspath(self.spec)),
            input_name(self.spec),
        )
        columns = [c for c in (reader.id_col, reader.image_col, reader.path_col, reader.text_col) if c]
        row = 0
        for group in range(pf.num_row_groups):
            group_rows = pf.metadata.row_group(group).num_rows
            start = row
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns):
                    for values in batch.to_pylist():
                        yield reader.item(values, row)
                        row += 1
            except Exception as exc:  # noqa: BLE001 - corrupt pages: the rest of this group is lost, not the run
                detail = f"row group {group} unreadable: {str(exc)[:160]}"
                for index in range(row, start + group_rows):
                    yield error_item(f"{self.spec}#{index}", f"{self.spec}#{index}", "corrupt row", detail)
                row = start + group_rows


class ArrowSource(Source):
    """Arrow IPC files (file or stream format, as `datasets` caches them)."""

    name = "arrow"

    def __iter__(self) -> Iterator[Item]:
        import pyarrow as pa

        try:
            try:
                ipc = pa.ipc.open_file(pa.memory_map(self.spec))
                names = ipc.schema.names
                batches = (ipc.get_batch(i) for i in range(ipc.num_record_batches))
            except pa.ArrowInvalid:
                stream = pa.ipc.open_stream(pa.memory_map(self.spec))
                names, batches = stream.schema.names, iter(stream)
        except Exception as exc:  # noqa: BLE001
            yield error_item(self.spec, os.path.abspath(self.spec), "corrupt arrow", str(exc)[:200])
            return
        reader = RowReader(
            names, self.options, self.spec, os.path.dirname(os.path.abspath(self.spec)), input_name(self.spec)
        )
        row = 0
        try:
            for batch in batches:
                for values in batch.to_pylist():
                    yield reader.item(values, row)
                    row += 1
        except Exception as exc:  # noqa: BLE001
            yield error_item(f"{self.spec}#{row}", f"{self.spec}#{row}", "corrupt row", str(exc)[:200])
