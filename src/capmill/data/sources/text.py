"""Caption text for text mode: a .txt file with one caption per line (a folder of .txt files is FolderSource)."""

from __future__ import annotations

from collections.abc import Iterator

from capmill.data.sources.base import ListingSource, error_item, input_name
from capmill.records import Item


class TextLinesSource(ListingSource):
    """Each non-empty line of a .txt file is one caption to structure; ids are `file#line`."""

    name = "text"

    def __iter__(self) -> Iterator[Item]:
        try:
            handle = open(self.spec, encoding="utf-8-sig")
        except OSError as exc:
            yield error_item(self.spec, self.spec, "unreadable file", str(exc), "text")
            return
        with handle:
            for lineno, line in enumerate(handle, start=1):
                text = line.strip()
                if text:
                    where = f"{self.spec}#{lineno}"
                    yield Item(
                        id=f"{input_name(self.spec)}#{lineno}",
                        source=where,
                        kind="text",
                        text=text,
                        meta={"line": lineno},
                    )
