"""Shared test fixtures: tiny real-architecture models (built once per session) and the credited COCO photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COCO_DIR = Path(__file__).parent / "data" / "coco"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory: ``tiny_model("qwen2_vl", **sizes) -> Path`` of a saved tiny model, built once per session.

    Treat the folder as read-only (other tests share it); copy it first if a test must change files.
    """
    from capmill.testing.tiny_models import make_sizes

    built: dict[tuple[str, str], Path] = {}

    def get(arch: str, **sizes) -> Path:
        key = (arch, make_sizes(**sizes).key())
        if key not in built:
            from capmill.testing import build_tiny_model

            built[key] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), **sizes)
        return built[key]

    return get


@pytest.fixture(scope="session")
def coco_photos() -> list[Path]:
    """The twelve credited COCO photos in tests/data/coco, sorted by name."""
    return sorted(COCO_DIR.glob("*.jpg"))


@pytest.fixture(scope="session")
def coco_rows() -> list[dict]:
    """tests/data/coco/images.jsonl parsed: one dict per photo with file, size, licence and reference captions."""
    with open(COCO_DIR / "images.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pytest_collection_modifyitems(config, items):
    """Tests marked `vllm` run only where vLLM is importable: its own environment (.ci/vllm-stage)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(
        reason="needs vLLM, which lives in its own environment: bash scripts/setup-vllm-env.sh, then .ci/vllm-stage"
    )
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)
