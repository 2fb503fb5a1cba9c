"""What `capmill serve` is configured with: the model, the batcher, the limits, auth, URL images, browsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024 * 1024


class ServeConfig(BaseModel):
    """Every knob of the server in one place; `create_app(config)` takes only this (and, in tests, a captioner)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # hub id or local folder; None serves only the --browse view
    profile: str | None = None
    engine: str = "transformers"
    captioner_options: dict[str, Any] = Field(default_factory=dict)  # device, dtype, scaffold, ...
    served_model_names: list[str] = Field(default_factory=list)  # names clients may send; first is listed

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = None
    insecure: bool = False  # listen on a non-loopback address without an API key

    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(256, ge=1)  # requests waiting for the engine beyond this get 503 + Retry-After
    request_timeout_s: float = Field(300.0, gt=0)

    max_body_bytes: int = Field(32 * MiB, ge=1024)
    max_image_bytes: int = Field(16 * MiB, ge=1)
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_images_per_request: int = Field(8, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)  # a request asking for more new tokens gets 400
    max_messages: int = Field(64, ge=1)  # chat messages per request (413)
    max_text_chars: int = Field(100_000, ge=1)  # text across a request's messages (413)
    max_stop_sequences: int = Field(8, ge=0)  # client `stop` strings (400)
    max_stop_chars: int = Field(64, ge=1)  # characters per stop string (400)
    max_grammar_bytes: int = Field(64 * 1024, ge=1)  # a grammar, JSON schema or constrained tools as sent (413)
    grammar_timeout_s: float = Field(5.0, gt=0)  # checking one grammar or schema, off the event loop (400)
    grammar_cache_size: int = Field(256, ge=1)  # checked grammars remembered (least recently used go first)
    receive_timeout_s: float = Field(30.0, gt=0)  # body upload + URL fetches + image preparation (408)
    max_inflight_per_client: int = Field(32, ge=1)  # generating requests open at once per client address (429)

    allow_url_images: bool = False
    allow_private_urls: bool = False  # loopback, private, link-local: only for trusted networks and tests
    url_timeout_s: float = Field(10.0, gt=0)  # whole fetch of one URL image, redirects included (408)
    url_allow_hosts: list[str] = Field(default_factory=list)  # host names fetched even at private addresses

    constrained: bool = False  # tool-call profiles: hold /v1/captions output to the tool's schema by default

    browse_dir: Path | None = None
    browse_roots: list[Path] = Field(default_factory=list)  # extra folders the gallery may show images from

    def names(self, profile_name: str | None, model: str | None = None) -> list[str]:
        """Model names a request may ask for: the served names, else the profile and the model id."""
        if self.served_model_names:
            return list(self.served_model_names)
        return list(dict.fromkeys(n for n in (profile_name, model or self.model) if n))
