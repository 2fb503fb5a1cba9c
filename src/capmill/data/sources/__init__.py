"""Input sources by name; `open_sources` infers the kind of each `capmill caption INPUT`."""

from __future__ import annotations

from capmill.data.sources.base import Source, SourceOptions
from capmill.registry import Registry

SOURCES: Registry[type[Source]] = Registry(
    "source",
    {
        "folder": "capmill.data.sources.files:FolderSource",
        "glob": "capmill.data.sources.files:GlobSource",
        "file": "capmill.data.sources.files:FileSource",
        "files": "capmill.data.sources.files:FileListSource",
        "url": "capmill.data.sources.urls:UrlSource",
        "urls": "capmill.data.sources.urls:UrlListSource",
        "parquet": "capmill.data.sources.parquet:ParquetSource",
        "arrow": "capmill.data.sources.parquet:ArrowSource",
        "webdataset": "capmill.data.sources.webdataset:WebDatasetSource",
        "hf": "capmill.data.sources.hf:HFDiskSource",
        "hf-hub": "capmill.data.sources.hf:HFHubSource",
        "jsonl": "capmill.data.sources.manifest:JsonlManifestSource",
        "csv": "capmill.data.sources.manifest:CsvManifestSource",
        "text": "capmill.data.sources.text:TextLinesSource",
    },
)


def open_sources(inputs, options=None):  # noqa: ANN001, ANN201 - re-exported, typed in spec.py
    from capmill.data.sources.spec import open_sources as _open

    return _open(inputs, options)


__all__ = ["SOURCES", "Source", "SourceOptions", "open_sources"]
