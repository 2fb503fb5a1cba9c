"""JSON Lines: one record per line, every field."""

from __future__ import annotations

import os
from typing import Any

from capmill.data.sinks.base import Sink, record_json
from capmill.records import Record


class JsonlSink(Sink):
    name = "jsonl"
    extension = ".jsonl"

    def __init__(self, path: str, **options: Any):
        super().__init__(path, **options)
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: Record, media: bytes | None = None) -> None:
        self._handle.write(record_json(record) + "\n")

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
