"""The structured caption of the json-captioner (AbstractPhil/Qwen3.5-0.8B-json-captioner), as pydantic v2 models.

`StructuredCaption.model_json_schema()` equals the `parameters` of the card's `emit_caption_schema` tool
exactly (a golden test checks it), so what we validate is what the model was trained against.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_ITEMS = 8
MAX_NAME = 64
SETTINGS: tuple[str, ...] = ("indoor", "outdoor", "unknown")
FIELDS: tuple[str, ...] = ("subjects", "actions", "setting", "style", "mood")

Setting = Literal["indoor", "outdoor", "unknown"]
_Short = Annotated[str, StringConstraints(max_length=64)]


def _seed_shape(schema: dict[str, Any]) -> None:
    # Extra keys are refused at validation, but the card's schema does not say so (nor carry a top-level
    # description); keep the published JSON Schema byte-for-byte the card's.
    schema.pop("additionalProperties", None)
    if schema.get("title") == "Caption":
        schema.pop("description", None)


class SubjectValue(BaseModel):
    """A single entity in the caption."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_seed_shape)

    name: str = Field(min_length=1, max_length=MAX_NAME)
    attributes: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)


class StructuredCaption(BaseModel):
    """Subjects, relational actions and setting; `style` and `mood` are const null (strict mode)."""

    model_config = ConfigDict(extra="forbid", title="Caption", json_schema_extra=_seed_shape)

    subjects: list[SubjectValue] = Field(default_factory=list, max_length=MAX_ITEMS)
    actions: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    setting: Setting = "unknown"
    style: _Short | None = Field(None, json_schema_extra={"const": None})
    mood: _Short | None = Field(None, json_schema_extra={"const": None})

    @field_validator("style", "mood")
    @classmethod
    def _always_null(cls, value: Any) -> None:
        # The schema keeps the string branch for compatibility but pins the value with const null.
        if value is not None:
            raise ValueError("must be null (const null in the emit_caption_schema tool)")
        return None
