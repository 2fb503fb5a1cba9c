"""What a model profile is: how a family loads, how the prompt is built, decoding defaults, how output is parsed.

Interface sketch laid down with the foundation; the models work fills it in (see capmill/models/).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from capmill.records import Decoding

Mode = Literal["caption", "structured", "text"]
MODES: tuple[str, ...] = ("caption", "structured", "text")


class Profile(BaseModel):
    """A named recipe for one captioner. Profiles are data; behaviour per architecture lives in families."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: str | None = None  # qwen3_5 | qwen2_vl | qwen2_5_vl | internvl | blip2; None: read from the config
    default_model: str | None = None  # hub id of the card's checkpoint
    description: str = ""
    prompt: str = "Describe this image."
    system_prompt: str | None = None
    decoding: Decoding = Decoding()
    modes: tuple[str, ...] = ("caption",)
    default_mode: str = "caption"
    output: Literal["text", "tool_call"] = "text"
    extra: dict[str, Any] = {}
