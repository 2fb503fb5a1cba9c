"""JSONL and CSV manifests: one row per input with a path, URL or (text mode) caption column, optional id."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator

from capmill.data.sources.base import Source, error_item, input_name
from capmill.data.sources.tabular import RowReader
from capmill.records import Item


class JsonlManifestSource(Source):
    """One JSON object per line; a line that is not a JSON object becomes an error record."""

    name = "jsonl"

    def __iter__(self) -> Iterator[Item]:
        base = os.path.dirname(os.path.abspath(self.spec))
        reader: RowReader | None = None
        with open(self.spec, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"a JSON {type(row).__name__}, not an object")
                except ValueError as exc:
                    where = f"{self.spec}#{lineno}"
                    yield error_item(
                        f"{input_name(self.spec)}#{lineno}",
                        where,
                        "corrupt row",
                        str(exc)[:200],
                        "text" if self.options.text_mode else "image",
                    )
                    continue
                if reader is None:
                    reader = RowReader(list(row), self.options, self.spec, base, input_name(self.spec))
                yield reader.item(row, lineno)


class CsvManifestSource(Source):
    """A CSV (or TSV) file with a header row."""

    name = "csv"

    def __iter__(self) -> Iterator[Item]:
        base = os.path.dirname(os.path.abspath(self.spec))
        delimiter = "\t" if self.spec.lower().endswith(".tsv") else ","
        with open(self.spec, encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle, delimiter=delimiter)
            reader = RowReader(list(rows.fieldnames or []), self.options, self.spec, base, input_name(self.spec))
            for lineno, row in enumerate(rows, start=2):
                yield reader.item(row, lineno)
