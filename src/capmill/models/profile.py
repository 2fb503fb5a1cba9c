"""What a model profile is: how a family loads, how the prompt is built, decoding defaults, how output is parsed.

Profiles are data (this module); behaviour per architecture lives in `capmill.models.families`; the named
profiles of the model cards capmill is built around live in `capmill.models.catalog`.
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
    needs_scaffold: bool = False  # system prompt + tools come from the json-coco-format scaffold
    chat_kwargs: dict[str, Any] = {}  # extra chat-template variables, e.g. enable_thinking=False
    aliases: tuple[str, ...] = ()  # other checkpoint names (last path part, case-insensitive) that mean this profile
    video: bool = False  # the card shows video input
    source: str = ""  # where each choice comes from (card, repo, our decision): shown by `capmill models`

    def prompt_for(self, mode: str) -> str | None:
        """The user text for a mode; None in text mode, where the caption text itself is the user turn."""
        if mode == "text":
            return None
        return self.extra.get(f"prompt_{mode}", self.prompt)
