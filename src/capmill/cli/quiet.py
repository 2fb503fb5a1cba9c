"""Holds back library warnings a user cannot act on, counting them so the CLI can say so in one line.

What is held back: Python deprecation warnings (`DeprecationWarning`, `FutureWarning`, wherever raised), other
warnings raised from outside capmill, warnings that libraries log without configuring logging, and transformers'
log warnings (slow reference kernels, deprecated arguments). Progress bars stay (a first download from the hub
takes minutes). capmill's own warnings, and every error, still show. `--verbose` shows them all.

transformers is imported lazily (importing it takes seconds), so its logger is quieted right after its logging
module is first imported, through an import hook; checked against transformers 5.25.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

CAPMILL_DIR = str(Path(__file__).resolve().parents[1])
LIBRARY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
TRANSFORMERS_LOGGING = "transformers.utils.logging"


class QuietLibraries:
    """Context manager: while open, library warnings are counted in `held_back` instead of printed."""

    def __init__(self) -> None:
        self.held_back = 0
        self._hook: _AfterImport | None = None
        self._handlers: list[logging.Handler] = []
        self._warnings: Any = None
        self._show: Any = None

    def __enter__(self) -> QuietLibraries:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        self._show = warnings.showwarning
        warnings.showwarning = self._showwarning
        self._last_resort = logging.lastResort
        logging.lastResort = _HoldBack(self)
        if TRANSFORMERS_LOGGING in sys.modules:
            self._quiet_transformers(sys.modules[TRANSFORMERS_LOGGING])
        else:
            self._hook = _AfterImport(TRANSFORMERS_LOGGING, self._quiet_transformers)
            sys.meta_path.insert(0, self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None and self._hook in sys.meta_path:
            sys.meta_path.remove(self._hook)
        for handler in self._handlers:
            handler.removeFilter(self._log_filter)
        warnings.showwarning = self._show
        logging.lastResort = self._last_resort
        self._warnings.__exit__(*exc)

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        from_capmill = str(filename).startswith(CAPMILL_DIR)
        if issubclass(category, LIBRARY_CATEGORIES) or not from_capmill:
            self.held_back += 1
            return
        self._show(message, category, filename, lineno, file, line)

    def _log_filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if record.levelno >= logging.WARNING:
            self.held_back += 1
        return False

    def _quiet_transformers(self, tf_logging: ModuleType) -> None:
        root = tf_logging.get_logger("transformers")  # configures transformers' handler
        for handler in root.handlers:
            handler.addFilter(self._log_filter)
            self._handlers.append(handler)


class _HoldBack(logging.Handler):
    """Stands in for logging's last-resort handler: libraries that log without configuring logging."""

    def __init__(self, quiet: QuietLibraries):
        super().__init__(logging.WARNING)
        self.quiet = quiet

    def emit(self, record: logging.LogRecord) -> None:
        fallback = self.quiet._last_resort
        if record.name == "capmill" or record.name.startswith("capmill.") or record.levelno >= logging.ERROR:
            if fallback is not None:
                fallback.handle(record)
        else:
            self.quiet.held_back += 1


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` once `name` has been imported (and executed) for the first time."""

    def __init__(self, name: str, callback: Any):
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        inner, callback = spec.loader, self.callback

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):  # noqa: ANN001
                return inner.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                module.__spec__.loader = module.__loader__ = inner
                inner.exec_module(module)
                callback(module)

        spec.loader = Loader()
        return spec
