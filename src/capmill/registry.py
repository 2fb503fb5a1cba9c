"""Name -> implementation registries, resolved lazily so `import capmill` pulls in no backend.

The only place in capmill that turns a backend's name into code: everything else asks a registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from capmill.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to "module:attribute" targets imported on first use."""

    def __init__(self, kind: str, entries: dict[str, str] | None = None):
        self.kind = kind
        self._targets: dict[str, str] = dict(entries or {})
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str | Any) -> None:
        """Add an entry: a "module:attribute" string, or the object itself."""
        if isinstance(target, str):
            self._targets[name] = target
            self._loaded.pop(name, None)
        else:
            self._targets[name] = f"<object {target!r}>"
            self._loaded[name] = target

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            raise UnknownNameError(self.kind, name, list(self._targets))
        module_name, _, attr = self._targets[name].partition(":")
        value = getattr(importlib.import_module(module_name), attr)
        self._loaded[name] = value
        return value

    def names(self) -> list[str]:
        return list(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)
