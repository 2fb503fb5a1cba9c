"""Output sinks by name; each writes records unchanged behind one `write()` / `close()`."""

from __future__ import annotations

from capmill.data.sinks.base import Sink
from capmill.registry import Registry

SINKS: Registry[type[Sink]] = Registry(
    "sink",
    {
        "jsonl": "capmill.data.sinks.jsonl:JsonlSink",
        "parquet": "capmill.data.sinks.parquet:ParquetSink",
        "webdataset": "capmill.data.sinks.webdataset:WebDatasetSink",
        "sidecar": "capmill.data.sinks.sidecar:SidecarSink",
        "hf": "capmill.data.sinks.hf:HFDatasetSink",
        "embedded": "capmill.data.sinks.embedded:EmbeddedSink",
    },
)

__all__ = ["SINKS", "Sink"]
