"""The few types everything passes along: an input Item, an engine Request and Generation, an output Record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "repaired", "invalid", "error"]
Kind = Literal["image", "video", "text"]
STATUSES: tuple[str, ...] = ("ok", "repaired", "invalid", "error")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def stable_hash(value: Any) -> str:
    """A short hash of a JSON-able value, independent of dict order."""
    return sha256_hex(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))[:16]


class Decoding(BaseModel):
    """Decoding parameters; part of the resume key, so two runs differ exactly when these differ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def merged(self, **changes: Any) -> Decoding:
        """A copy with the given fields changed (None values leave a field as it is)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return self.model_copy(update=given) if given else self


@dataclass
class Item:
    """One input: image or video bytes, or caption text, with where it came from."""

    id: str
    source: str
    kind: Kind = "image"
    data: bytes | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # reading failed: "reason: detail"; the item still becomes a record
    image: Any = field(default=None, repr=False)  # upright RGB PIL image decoded by the pipeline's workers, if any
    _hash: str | None = field(default=None, repr=False)

    @property
    def content_hash(self) -> str:
        """sha256 of the bytes (or text): the same content under the same settings is captioned once."""
        if self._hash is None:
            if self.data is not None:
                self._hash = sha256_hex(self.data)
            elif self.text is not None:
                self._hash = sha256_hex(self.text)
            else:
                self._hash = sha256_hex(f"missing:{self.source}")
        return self._hash


@dataclass
class Request:
    """One prepared model input, engine-neutral: chat messages in Hugging Face form plus decoding."""

    item_id: str
    messages: list[dict[str, Any]]
    decoding: Decoding
    images: list[Any] = field(default_factory=list)  # PIL images, in message order
    videos: list[list[Any]] = field(default_factory=list)  # each a list of PIL frames
    tools: list[dict[str, Any]] | None = None
    chat_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. enable_thinking=False
    constraint: dict[str, Any] | None = None  # {"json_schema": {...}} or {"grammar": "..."}
    prompt_text: str | None = None  # plain prompt for families without a chat template (BLIP-2)
    stop_repetition: dict[str, int] | None = None  # stop a repetition loop during decoding (capmill.quality)
    content_hash: str | None = None  # sha256 of the input's bytes: engines that cache media by id key on it


@dataclass
class Generation:
    """What an engine returns for one Request."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "error"
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] | None = None  # the gate's verdict and every attempt (capmill.quality.gate)
    tags: dict[str, Any] | None = None  # an image tagger's tags and scores (capmill.taggers)
    # with `error`: True when the engine or the network failed (a later run retries), False when the input is bad
    retryable: bool | None = None


@dataclass
class Record:
    """One output row; sinks write it as it is and never change it."""

    id: str
    source: str
    content_hash: str
    profile: str
    engine: str
    model: str
    prompt_hash: str
    decoding: dict[str, Any]
    status: Status
    caption: str | None = None
    structured: dict[str, Any] | None = None
    raw: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # parser repairs and reasons
    grounding: dict[str, Any] | None = None
    mode: str = "caption"
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] | None = None  # image-text score, gate verdict and attempts, when a gate ran
    tags: dict[str, Any] | None = None  # {"tags": [...], "rating": ..., scores}, when a tagger ran
    error_kind: str | None = None  # error records: "retryable" (a re-run retries it) or "final" (the input is bad)
    stages: dict[str, Any] | None = None  # a recipe's record: every stage's output by stage name
    captions: dict[str, str] | None = None  # a prompt set's captions by variant (several captions per image)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in row.items() if k in known})

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "repaired")
