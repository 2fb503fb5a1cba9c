"""Families: how each architecture loads and turns Requests into model inputs. Chosen by name via FAMILIES."""

from __future__ import annotations

from capmill.registry import Registry

FAMILIES: Registry[type] = Registry(
    "family",
    {
        "qwen3_5": "capmill.models.families.qwen3_5:Qwen35Family",
        "qwen2_vl": "capmill.models.families.qwen_vl:Qwen2VLFamily",
        "qwen2_5_vl": "capmill.models.families.qwen_vl:Qwen25VLFamily",
        "internvl": "capmill.models.families.internvl:InternVLFamily",
        "blip2": "capmill.models.families.blip2:Blip2Family",
        "generic": "capmill.models.families.base:Family",
    },
)


def get_family(name: str):  # -> Family instance
    return FAMILIES.get(name)()
