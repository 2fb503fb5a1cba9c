"""Test support: tiny random-weight models of the real architectures, built offline (no hub)."""

from __future__ import annotations

from typing import Any

__all__ = ["ARCHS", "build_tiny_model"]

ARCHS = ("qwen3_5", "qwen2_5_vl", "qwen2_vl", "internvl", "blip2")


def build_tiny_model(arch: str, path: Any, **sizes: Any):
    """Build and save a tiny ``arch`` model (see capmill.testing.tiny_models); returns the folder as a Path."""
    from capmill.testing.tiny_models import build_tiny_model as build

    return build(arch, path, **sizes)
