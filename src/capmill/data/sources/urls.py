"""URLs: one named on the command line, or a text file with one http(s) URL per line."""

from __future__ import annotations

import os
from collections.abc import Iterator

from capmill.data.sources.base import ListingSource, error_item, kind_of, url_item
from capmill.records import Item


def _kind(url: str) -> str:
    kind = kind_of(url.split("?", 1)[0])
    return "video" if kind == "video" else "image"


class UrlSource(ListingSource):
    """A single http(s) URL."""

    name = "url"

    def __iter__(self) -> Iterator[Item]:
        yield url_item(self.spec, self.spec, _kind(self.spec))


class UrlListSource(ListingSource):
    """A text file of URLs, one per line; each is downloaded with timeouts, retries and a size cap."""

    name = "urls"

    def __iter__(self) -> Iterator[Item]:
        try:
            handle = open(self.spec, encoding="utf-8")
        except OSError as exc:
            yield error_item(self.spec, os.path.abspath(self.spec), "unreadable file", str(exc))
            return
        with handle:
            for line in handle:
                url = line.strip()
                if not url or url.startswith("#"):
                    continue
                if not url.startswith(("http://", "https://")):
                    yield error_item(url, url, "bad url", "only http and https URLs are fetched")
                    continue
                yield url_item(url, url, _kind(url))
