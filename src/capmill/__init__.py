"""capmill: turn image collections into caption datasets.

`import capmill` stays light: torch, transformers, vLLM and Ray load only when an engine or runner needs them.
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
    "Recipe": "capmill.recipes",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'capmill' has no attribute {name!r}")
