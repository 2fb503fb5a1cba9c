"""Running captioning jobs: the streaming pipeline, and runners by name ("local"; "ray" is added beside it)."""

from __future__ import annotations

from capmill.registry import Registry

RUNNERS: Registry[type] = Registry(
    "runner", {"local": "capmill.run.local:LocalRunner", "ray": "capmill.run.ray_runner:RayRunner"}
)

__all__ = ["RUNNERS"]
