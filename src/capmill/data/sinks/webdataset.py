"""New WebDataset shards: per sample the image as it came (never re-encoded), the record as .json, the caption as .txt."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from typing import Any

from capmill.data.sinks.base import Sink, sniff_ext
from capmill.records import Record

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(item_id: str) -> str:
    """A WebDataset key for an id: no dots or slashes (they split keys), unique through a short hash."""
    readable = _UNSAFE.sub("_", item_id)[-80:].strip("_") or "sample"
    return f"{readable}_{hashlib.sha1(item_id.encode()).hexdigest()[:10]}"


class WebDatasetSink(Sink):
    name = "webdataset"
    extension = ".tar"
    wants_media = True

    def __init__(self, path: str, **options: Any):
        super().__init__(path, **options)
        self._tar = tarfile.open(path, "w")  # noqa: SIM115 - closed in close()
        self._now = time.time()

    def _add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), self._now, 0o644
        self._tar.addfile(info, io.BytesIO(payload))

    def write(self, record: Record, media: bytes | None = None) -> None:
        key = sample_key(record.id)
        if media:
            self._add(f"{key}.{sniff_ext(media)}", media)
        self._add(f"{key}.json", json.dumps(record.to_dict(), ensure_ascii=False).encode("utf-8"))
        if record.caption is not None:
            self._add(f"{key}.txt", record.caption.encode("utf-8"))

    def close(self) -> None:
        if not self._tar.closed:
            self._tar.close()
