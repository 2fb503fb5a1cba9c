"""WebDataset tar shards: members grouped by key (the name up to the first dot), read as a stream."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator

from capmill.data.sources.base import IMAGE_EXTS, TEXT_COLUMNS, Source, error_item, input_name
from capmill.records import Item


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name; the rest is the extension."""
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(folder, stem) if folder else stem), ext.lower()


class WebDatasetSource(Source):
    """One sample per key: its image member (or its caption text in text mode)."""

    name = "webdataset"

    def __iter__(self) -> Iterator[Item]:
        shard = self.spec
        try:
            tar = tarfile.open(shard, mode="r|*")
        except (OSError, tarfile.TarError) as exc:
            yield error_item(shard, os.path.abspath(shard), "corrupt tar", str(exc)[:200])
            return
        key, members = None, {}
        try:
            with tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    k, ext = split_key(info.name)
                    if k != key and key is not None:
                        yield self._sample(key, members)
                        members = {}
                    key = k
                    handle = tar.extractfile(info)
                    members[ext] = handle.read() if handle else b""
        except (OSError, tarfile.TarError, EOFError) as exc:
            # the sample being read when the stream broke is incomplete: it becomes the error record
            yield error_item(f"{input_name(shard)}#{key}", f"{shard}#{key}", "corrupt tar", str(exc)[:200])
            return
        if key is not None:
            yield self._sample(key, members)
        tail = _garbage_after(shard, tar.offset)
        if tail:  # tarfile ends quietly at a cut-off header: say so, or the lost samples go unnoticed
            where = f"{shard}#@{tar.offset}"
            yield error_item(
                f"{input_name(shard)}#@{tar.offset}",
                where,
                "corrupt tar",
                f"archive cut off or garbled at byte {tar.offset} ({tail})",
            )

    def _sample(self, key: str, members: dict[str, bytes]) -> Item:
        item_id, where = f"{input_name(self.spec)}#{key}", f"{self.spec}#{key}"
        if self.options.text_mode:
            for ext in ("txt", *TEXT_COLUMNS):
                if ext in members:
                    text = members[ext].decode("utf-8", "replace").strip()
                    return Item(id=item_id, source=where, kind="text", text=text, meta={"key": key})
            return error_item(item_id, where, "no text", f"sample has {sorted(members)}", "text")
        wanted = (self.options.image_column,) if self.options.image_column else ()
        for ext in (*wanted, "jpg", "jpeg", "png", "webp", *(e.lstrip(".") for e in sorted(IMAGE_EXTS))):
            if ext in members:
                return Item(id=item_id, source=where, kind="image", data=members[ext], meta={"key": key, "ext": ext})
        return error_item(item_id, where, "not an image", f"tar sample has no image member, only {sorted(members)}")


def _garbage_after(path: str, offset: int) -> str:
    """A description of non-zero bytes where the end-of-archive marker should be ("" for a proper end)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            block = handle.read(1024)
    except OSError:
        return ""
    return f"{len(block)} bytes of an incomplete header" if block.strip(b"\0") else ""
