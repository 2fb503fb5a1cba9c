"""Engines turn prepared Requests into Generations: transformers, vLLM, any OpenAI-compatible server."""

from __future__ import annotations

from capmill.engines.base import Engine
from capmill.registry import Registry

ENGINES: Registry[type[Engine]] = Registry(
    "engine",
    {
        "transformers": "capmill.engines.transformers_engine:TransformersEngine",
        "vllm": "capmill.engines.vllm_engine:VLLMEngine",
        "openai": "capmill.engines.openai_engine:OpenAIEngine",
    },
)

__all__ = ["ENGINES", "Engine"]
