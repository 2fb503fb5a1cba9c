"""capmill: turn image collections into caption datasets.

    import capmill
    summary = capmill.caption_dataset("photos/", run_dir="runs/a", model="prithivMLmods/Inkscope-Captions-2B-0526")
    for record in capmill.read_records("runs/a"):
        print(record.id, record.status, record.caption)

`import capmill` stays light: every name here loads on first use, and torch, transformers, vLLM and Ray load only
when an engine or runner needs them. Plugins extend the registries (`ENGINES`, `PROFILES`, `SOURCES`, `SINKS`)
through entry points: docs/plugins.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "StructuredCaption": "capmill.schema",
    "ParseResult": "capmill.schema",
    "parse_tool_call": "capmill.schema",
    "ground": "capmill.schema",
    "GroundingReport": "capmill.schema",
    "Captioner": "capmill.captioner",
    "Item": "capmill.records",
    "Record": "capmill.records",
    "Decoding": "capmill.records",
    "Request": "capmill.records",
    "Generation": "capmill.records",
    "caption_dataset": "capmill.api",
    "read_records": "capmill.api",
    "Engine": "capmill.engines.base",
    "Profile": "capmill.models.profile",
    "Source": "capmill.data.sources.base",
    "Sink": "capmill.data.sinks.base",
    "ENGINES": "capmill.engines",
    "PROFILES": "capmill.models.catalog",
    "SOURCES": "capmill.data.sources",
    "SINKS": "capmill.data.sinks",
    "RUNNERS": "capmill.run",
    "CapmillError": "capmill.errors",
    "ConfigError": "capmill.errors",
    "Recipe": "capmill.recipes",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capmill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
