"""The Sink contract: `write(record, media)` then `close()`; a sink stores records as they are, never changing them."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from capmill.records import Record

# Record fields stored as JSON text in columnar formats, so every shard has the same schema whatever they hold.
JSON_FIELDS = (
    "decoding",
    "structured",
    "notes",
    "grounding",
    "timings",
    "tokens",
    "meta",
    "quality",
    "tags",
    "stages",
    "captions",
)
SCALAR_FIELDS = tuple(f for f in Record.__dataclass_fields__ if f not in JSON_FIELDS)


class Sink(ABC):
    """Writes records to `path`. `media` is the input's original bytes, for formats that carry the image."""

    name: ClassVar[str] = "sink"
    extension: ClassVar[str] = ""
    wants_media: ClassVar[bool] = False

    def __init__(self, path: str, **options: Any):
        self.path = path
        self.options = options

    @abstractmethod
    def write(self, record: Record, media: bytes | None = None) -> None:
        """Store one record."""

    @abstractmethod
    def close(self) -> None:
        """Flush everything to `path`; safe to call twice."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_to_row(record: Record) -> dict[str, Any]:
    """A flat row: scalars as they are, nested fields as JSON text (read back exactly by row_to_record)."""
    data = record.to_dict()
    for name in JSON_FIELDS:
        data[name] = json.dumps(data[name], ensure_ascii=False, sort_keys=True)
    return data


def row_to_record(row: dict[str, Any]) -> Record:
    data = dict(row)
    for name in JSON_FIELDS:
        value = data.get(name)
        if isinstance(value, str):
            data[name] = json.loads(value)
    return Record.from_dict(data)


def record_json(record: Record) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)


def sniff_ext(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic numbers."""
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return "bin"
