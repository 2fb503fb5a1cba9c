"""Sidecar files next to each image, as trainers expect: `photo.txt` (caption) and/or `photo.json` (structured),
and `photo.tags.txt` (an image tagger's tags, comma-separated) with kind `tags`."""

from __future__ import annotations

import json
import os
from typing import Any

from capmill.data.sinks.base import Sink
from capmill.errors import ConfigError
from capmill.records import Record

CAPTION_MODES = ("first", "lines", "files")


def write_atomic(path: str, text: str) -> None:
    """Write through a temporary name and rename, so a crash never leaves half a sidecar."""
    tmp = f"{path}.capmill-tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class SidecarSink(Sink):
    """`path` is unused (sidecars sit beside the images); records of non-file inputs or errors get no sidecar.

    An existing sidecar with other content is kept unless `overwrite=True`: it may be a human's caption.
    A record with several captions (`captions`, a recipe's prompt set: variant -> caption) gets, with
    `captions="lines"`, one caption per line in `photo.txt` (kohya's multi-caption format: one picked per step),
    with `captions="files"`, one `photo.VARIANT.txt` per variant; with `"first"` (default), its own caption.
    """

    name = "sidecar"
    extension = ""

    def __init__(
        self,
        path: str = "",
        kinds: tuple[str, ...] = ("txt", "json"),
        overwrite: bool = False,
        captions: str = "first",
        **options: Any,
    ):
        super().__init__(path, **options)
        if captions not in CAPTION_MODES:
            raise ConfigError(f"sidecar captions {captions!r}: choose one of {', '.join(CAPTION_MODES)}")
        self.kinds, self.overwrite, self.captions = kinds, overwrite, captions
        self.written = 0
        self.skipped: list[str] = []

    def targets(self, record: Record) -> dict[str, str]:
        """Sidecar path -> content for one record (empty when it gets none)."""
        if not record.ok or not os.path.isfile(record.source):
            return {}
        stem = os.path.splitext(record.source)[0]
        out = {}
        many = record.captions if isinstance(record.captions, dict) else None
        if "txt" in self.kinds and many and self.captions == "lines":
            out[f"{stem}.txt"] = "".join(" ".join(str(c).split()) + "\n" for c in many.values() if c)
        elif "txt" in self.kinds and many and self.captions == "files":
            for variant, text in many.items():
                if text:
                    out[f"{stem}.{_safe(variant)}.txt"] = str(text).rstrip("\n") + "\n"
        elif "txt" in self.kinds and record.caption is not None:
            out[f"{stem}.txt"] = record.caption.rstrip("\n") + "\n"
        if "json" in self.kinds and record.structured is not None:
            out[f"{stem}.json"] = json.dumps(record.structured, ensure_ascii=False, indent=2) + "\n"
        if "tags" in self.kinds and record.tags is not None:
            out[f"{stem}.tags.txt"] = ", ".join(record.tags.get("tags", [])) + "\n"
        return out

    def write(self, record: Record, media: bytes | None = None) -> None:
        for path, text in self.targets(record).items():
            if os.path.exists(path) and not self.overwrite:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    if handle.read() != text:
                        self.skipped.append(path)
                        continue
            write_atomic(path, text)
            self.written += 1

    def close(self) -> None:
        pass


def _safe(name: str) -> str:
    """A variant name as part of a file name."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(name)) or "caption"
