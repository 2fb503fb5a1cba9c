"""Parse the INPUT arguments of `capmill caption` into Sources: explicit `kind:target`, else inferred."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from capmill.data.sources.base import IMAGE_EXTS, VIDEO_EXTS, Source, SourceOptions
from capmill.errors import ConfigError
from capmill.records import Item

HF_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def infer_kind(spec: str, mode: str = "caption") -> tuple[str, str]:
    """(source kind, target) for one INPUT argument; see docs/runs.md for the rules."""
    from capmill.data.sources import SOURCES

    head, sep, rest = spec.partition(":")
    if sep and head in SOURCES and not rest.startswith("//"):
        return head, rest
    if spec.startswith(("http://", "https://")):
        return "url", spec
    if os.path.isdir(spec):
        if any(os.path.exists(os.path.join(spec, m)) for m in HF_DISK_MARKERS):
            return "hf", spec
        return "folder", spec
    if os.path.lexists(spec):
        return _by_extension(spec, mode), spec
    if any(ch in spec for ch in "*?["):
        return "glob", spec
    if HUB_ID.match(spec):
        return "hf-hub", spec
    raise ConfigError(f"input {spec!r}: no such file or folder (and not a URL, glob or dataset id)")


def _by_extension(path: str, mode: str) -> str:
    lower = path.lower()
    ext = os.path.splitext(lower)[1]
    if ext == ".parquet":
        return "parquet"
    if ext in (".arrow", ".feather", ".ipc"):
        return "arrow"
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext == ".txt" and mode == "text":
        return "text"
    if ext == ".txt":
        return "urls" if _first_entry(path).startswith(("http://", "https://")) else "files"
    if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
        return "file"
    return "file"  # an unknown extension is tried as an image; a non-image becomes an error record


def _first_entry(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if line and not line.startswith("#"):
                    return line
    except OSError:
        pass
    return ""


class ChainSource(Source):
    """Several sources one after another; refuses two inputs that would give the same ids."""

    name = "chain"

    def __init__(self, sources: Sequence[Source], options: SourceOptions | None = None):
        super().__init__(" ".join(s.spec for s in sources), options)
        self.sources = list(sources)

    def __iter__(self) -> Iterator[Item]:
        for source in self.sources:
            yield from source

    def describe(self) -> dict[str, Any]:
        return {"kind": "chain", "sources": [s.describe() for s in self.sources]}

    def count(self) -> int | None:
        total = 0
        for source in self.sources:
            n = source.count()
            if n is None:
                return None
            total += n
        return total


def open_sources(inputs: Sequence[str], options: SourceOptions | None = None) -> ChainSource:
    """One Source per INPUT argument, checked now (config errors before any work), chained in order."""
    from capmill.data.sources import SOURCES

    options = options or SourceOptions()
    if not inputs:
        raise ConfigError("no INPUT given: name image files, folders, globs, lists, URLs, tables or datasets")
    sources = []
    for spec in inputs:
        kind, target = infer_kind(spec, options.mode)
        sources.append(SOURCES.get(kind)(target, options))
    return ChainSource(sources, options)
