"""Turn one table row (Parquet, Arrow, a Hugging Face dataset, a JSONL/CSV manifest) into an Item."""

from __future__ import annotations

import os
from typing import Any

from capmill.data.sources.base import (
    ID_COLUMNS,
    IMAGE_COLUMNS,
    PATH_COLUMNS,
    TEXT_COLUMNS,
    SourceOptions,
    error_item,
    file_item,
    pick_column,
    url_item,
)
from capmill.records import Item


class RowReader:
    """Knows which columns hold the id, the image (bytes, struct or path/URL) and the text of a table."""

    def __init__(
        self, names: list[str], options: SourceOptions, origin: str, base_dir: str, id_origin: str | None = None
    ):
        self.options, self.origin, self.base_dir = options, origin, base_dir
        self.id_origin = id_origin or origin  # ids without an id column: `<id_origin>#<row>`
        self.id_col = pick_column(names, options.id_column, ID_COLUMNS)
        if options.text_mode:
            self.text_col = pick_column(names, options.text_column, TEXT_COLUMNS)
            self.image_col = self.path_col = None
            if self.text_col is None:
                raise_config(origin, "no text column", names, "--text-column")
        else:
            self.text_col = None
            self.image_col = pick_column(names, options.image_column, IMAGE_COLUMNS)
            self.path_col = None if self.image_col else pick_column(names, None, PATH_COLUMNS)
            if self.image_col is None and self.path_col is None:
                raise_config(origin, "no image, path or url column", names, "--image-column")

    def item(self, row: dict[str, Any], index: int | str) -> Item:
        ident = row.get(self.id_col) if self.id_col else None
        item_id = str(ident) if ident not in (None, "") else f"{self.id_origin}#{index}"
        where = f"{self.origin}#{index}"
        meta = {"row": index}
        if self.text_col:
            text = row.get(self.text_col)
            if not isinstance(text, str) or not text.strip():
                return error_item(item_id, where, "corrupt row", f"column {self.text_col!r} holds no text", "text")
            return Item(id=item_id, source=where, kind="text", text=text.strip(), meta=meta)
        value = row.get(self.image_col or self.path_col)  # type: ignore[arg-type]
        if isinstance(value, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return Item(id=item_id, source=where, kind="image", data=bytes(value), meta=meta)
        if isinstance(value, str) and value:
            if value.startswith(("http://", "https://")):
                return url_item(item_id, value, **meta)
            path = value if os.path.isabs(value) else os.path.join(self.base_dir, value)
            return file_item(item_id, path, **meta)
        column = self.image_col or self.path_col
        got = "null" if value is None else type(value).__name__
        return error_item(item_id, where, "corrupt row", f"column {column!r} holds {got}, not image bytes or a path")


def raise_config(origin: str, problem: str, names: list[str], flag: str) -> None:
    from capmill.errors import ConfigError

    raise ConfigError(f"{origin}: {problem} among {names}; name one with {flag}")
