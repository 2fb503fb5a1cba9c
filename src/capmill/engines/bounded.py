"""A dict that keeps only its most recently used entries: caches keyed by what clients send stay bounded."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LRUDict(OrderedDict):
    """At most `maxsize` entries; reading or writing an entry makes it the most recent, the oldest goes first."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)
