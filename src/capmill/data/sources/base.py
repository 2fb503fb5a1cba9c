"""The Source contract: iterate Items cheaply; bytes of files and URLs are fetched later, in the decode workers."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from capmill.records import Item, Kind

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"})
TEXT_EXTS = frozenset({".txt"})


@dataclass(frozen=True)
class SourceOptions:
    """How to read inputs; column names are guessed when not given."""

    mode: str = "caption"  # "text" reads caption text instead of images
    recursive: bool = True
    id_column: str | None = None
    image_column: str | None = None  # bytes, {"bytes", "path"} struct, or a path/URL string column
    text_column: str | None = None
    split: str | None = None  # Hugging Face datasets: which split (default: every split)
    include_video: bool = True

    @property
    def text_mode(self) -> bool:
        return self.mode == "text"


class Source(ABC):
    """An iterable of Items, each with a stable id so that a resumed run can skip what is done."""

    name: ClassVar[str] = "source"

    def __init__(self, spec: str, options: SourceOptions | None = None):
        self.spec = spec
        self.options = options or SourceOptions()

    @abstractmethod
    def __iter__(self) -> Iterator[Item]:
        """Yield Items in a stable order; a bad entry is an Item with `error` set, never an exception."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "spec": self.spec}

    def count(self) -> int | None:
        """How many items iteration will yield, when that is cheap to know (for progress and ETA); else None."""
        return None


class ListingSource(Source):
    """A source whose iteration only lists names (no bytes), so counting is a second cheap pass."""

    def count(self) -> int | None:
        return sum(1 for _ in self)


def kind_of(path: str) -> Kind | None:
    """image / video / text by extension, None for anything else."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in TEXT_EXTS:
        return "text"
    return None


def input_name(spec: str) -> str:
    """The name ids start from: the last part of the input's absolute path (`photos`, `./photos/` and
    `/data/photos` all give `photos`), so ids do not depend on how the input was typed or where from."""
    return os.path.basename(os.path.normpath(os.path.abspath(spec))) or os.sep


def relative_id(root: str, path: str) -> str:
    """`<root name>/<path relative to root>`, with `/` separators: a file's id under a folder or glob root."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    name = input_name(root)
    parts = [] if name == os.sep else [name]
    return "/".join([*parts, *rel.split(os.sep)])


def file_item(item_id: str, path: str, kind: Kind = "image", **meta: Any) -> Item:
    """A lazy Item for a local file: its bytes are read by `capmill.data.fetch.load` in a worker."""
    return Item(id=item_id, source=os.path.abspath(path), kind=kind, meta={"path": os.path.abspath(path), **meta})


def url_item(item_id: str, url: str, kind: Kind = "image", **meta: Any) -> Item:
    return Item(id=item_id, source=url, kind=kind, meta={"url": url, **meta})


def error_item(item_id: str, source: str, reason: str, detail: str = "", kind: Kind = "image") -> Item:
    """An input that could not be read at all; the pipeline turns it into a record with status "error"."""
    return Item(id=item_id, source=source, kind=kind, error=f"{reason}: {detail}" if detail else reason)


def pick_column(names: list[str], given: str | None, candidates: tuple[str, ...]) -> str | None:
    """The column the user named, else the first conventional name present."""
    if given:
        return given
    lowered = {n.lower(): n for n in names}
    for c in candidates:
        if c in lowered:
            return lowered[c]
    return None


IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
PATH_COLUMNS = ("path", "file", "file_name", "filename", "image_path", "filepath", "url", "image_url")
TEXT_COLUMNS = ("caption", "text", "description", "prompt", "alt", "alt_text")
ID_COLUMNS = ("id", "key", "__key__", "image_id", "uid")
