"""Name -> implementation registries, resolved lazily so `import capmill` pulls in no backend.

The only place in capmill that turns a backend's name into code: everything else asks a registry. Installed
packages add names through entry points (docs/plugins.md): an entry point `NAME = "module:attribute"` in the
group `capmill.engines`, `capmill.profiles`, `capmill.sources` or `capmill.sinks` is a registry entry like
capmill's own, read the first time a name is not found or the names are listed, and imported only when used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from capmill.errors import ConfigError, UnknownNameError

T = TypeVar("T")
log = logging.getLogger(__name__)

# registry kind -> the entry-point group third-party packages fill
ENTRY_POINT_GROUPS = {
    "engine": "capmill.engines",
    "profile": "capmill.profiles",
    "source": "capmill.sources",
    "sink": "capmill.sinks",
}


class Registry(Generic[T]):
    """Maps names to "module:attribute" targets imported on first use; plugins add names through entry points."""

    def __init__(self, kind: str, entries: dict[str, str] | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self.group = entry_point_group or ENTRY_POINT_GROUPS.get(kind)
        self._targets: dict[str, str] = dict(entries or {})
        self._loaded: dict[str, T] = {}
        self._plugins_read = self.group is None
        self.plugins: dict[str, str] = {}  # name -> the distribution that provides it
        self.shadowed: list[tuple[str, str]] = []  # (name, distribution) of plugin entries a registered name hides

    def register(self, name: str, target: str | Any) -> None:
        """Add an entry: a "module:attribute" string, or the object itself. It replaces a plugin's of that name."""
        self.plugins.pop(name, None)
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
            self._read_plugins()
        if name not in self._targets:
            raise UnknownNameError(self.kind, name, list(self._targets))
        module_name, _, attr = self._targets[name].partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            if name not in self.plugins:
                raise
            raise ConfigError(
                f"{self.kind} {name!r} from the plugin package {self.plugins[name]!r} cannot be loaded "
                f"({type(exc).__name__}: {exc}); reinstall or uninstall that package"
            ) from exc
        self._loaded[name] = value
        return value

    def target(self, name: str) -> str:
        """The "module:attribute" a name points to (without importing it)."""
        if name not in self:
            raise UnknownNameError(self.kind, name, list(self._targets))
        return self._targets[name]

    def names(self) -> list[str]:
        self._read_plugins()
        return list(self._targets)

    def __contains__(self, name: object) -> bool:
        if name in self._targets:
            return True
        self._read_plugins()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _read_plugins(self) -> None:
        """Add the entry points of installed packages, once; a name capmill or the caller registered wins."""
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for entry in entry_points(group=self.group):
            dist = entry.dist.name if entry.dist is not None else "?"
            if entry.name in self._targets:
                self.shadowed.append((entry.name, dist))
                log.warning("%s %r of plugin %s is ignored: the name is taken", self.kind, entry.name, dist)
                continue
            self._targets[entry.name] = entry.value
            self.plugins[entry.name] = dist
