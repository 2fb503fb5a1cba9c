"""`Captioner`: the Python API. Inputs -> Requests (profile + family) -> engine batches -> Records.

Longer than most modules (~350 lines) because it is the one public surface every runner, the server and the CLI
drive: configuration, the run identity of its settings, prepare, generate, finish and the streaming caption loop.

The pipeline, server and CLI are built on these methods: `prepare` (one input -> one Request, or InputError),
`generate` (one engine batch), `finish` (parse into a Record); `caption` chains them for a list of inputs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError, InputError, ModelLoadError
from capmill.models.families import get_family
from capmill.models.profile import Profile
from capmill.models.request_builder import RequestBuilder
from capmill.models.resolve import read_model_config, resolve_family, resolve_profile
from capmill.records import Decoding, Generation, Item, Record, Request, sha256_hex, stable_hash

TEXT_SUFFIXES = frozenset({".txt", ".caption", ".md"})


class Captioner:
    """One model under one profile, mode, prompt and decoding; the engine loads on the first `generate`."""

    def __init__(
        self,
        model: str | None = None,
        profile: str | Profile | None = None,
        engine: str = "transformers",
        mode: str | None = None,
        prompt: str | None = None,
        scaffold: str | Path | None = None,
        decoding: dict[str, Any] | Decoding | None = None,
        engine_options: dict[str, Any] | None = None,
        batch_size: int = 8,
        *,
        video_fps: float | None = None,
        video_frames: int | None = None,
        max_video_frames: int = 64,
        constrained: bool = False,
    ):
        self.profile = resolve_profile(model or "", profile)
        model = model or self.profile.default_model
        if not model:
            raise ConfigError(f"profile {self.profile.name!r} has no default model: pass model=...")
        self.model = str(model)
        self.engine_name = engine
        self.engine_options = dict(engine_options or {})
        from capmill.run.identity import resolve_model

        self.model_identity = resolve_model(self.model)  # absolute path + fingerprint, or hub id + revision
        self.batch_size = max(1, int(batch_size))
        self.mode = mode or self.profile.default_mode
        if self.mode not in self.profile.modes:
            raise ConfigError(
                f"profile {self.profile.name!r} has no mode {self.mode!r}; its modes: {', '.join(self.profile.modes)}"
            )
        self.decoding = _decoding(self.profile.decoding, decoding)
        self.video_fps, self.video_frames, self.max_video_frames = video_fps, video_frames, max_video_frames
        self._prompt_override = prompt
        self.constrained = bool(constrained)
        self.scaffold = None
        if self.profile.needs_scaffold:
            from capmill.models.scaffold import load_scaffold

            self.scaffold = load_scaffold(scaffold)
        self.family_name = self._family_name()
        self.family = get_family(self.family_name)
        self._constraint = self._make_constraint() if self.constrained else None
        self._engine: Any = None
        self._processor: Any = None

    # ---- configuration ----
    def _family_name(self) -> str:
        try:
            config = read_model_config(self.model)
        except ModelLoadError:
            if self.profile.family:
                return self.profile.family  # hub unreachable: the profile says; loading checks again
            raise
        return resolve_family(self.model, self.profile, config)

    def prompt(self, mode: str | None = None) -> str | None:
        """The user text sent with each image (None in text mode: the caption text is the user turn)."""
        mode = mode or self.mode
        if mode == "text":
            return None
        return self._prompt_override if self._prompt_override is not None else self.profile.prompt_for(mode)

    def system_prompt(self) -> str | None:
        return self.scaffold.system_prompt if self.scaffold else self.profile.system_prompt

    def tools(self) -> list[dict[str, Any]] | None:
        return self.scaffold.tools if self.scaffold else None

    def settings(self) -> dict[str, Any]:
        """What identifies this captioner's output: the run manifest and the resume key.

        The model as resolved (see `capmill.run.identity`), and every engine option set that changes outputs
        (dtype, `--exact`...; not those an engine lists in `Options.identity_exempt`); constrained decoding is in
        the prompt hash."""
        identity = {k: v for k, v in self.model_identity.items() if k != "model"}
        return {
            "profile": self.profile.name,
            "model": self.model_identity["model"],
            **{f"model_{k}": v for k, v in identity.items()},
            "engine": self.engine_name,
            "engine_options": self.identity_options(),
            "mode": self.mode,
            "prompt_hash": self.prompt_hash(),
            "decoding": self.decoding.model_dump(mode="json"),
        }

    def identity_options(self) -> dict[str, Any]:
        """The engine options given that change outputs (validated: a wrong option fails here, before any work)."""
        from pydantic import ValidationError

        from capmill.engines import ENGINES

        options_cls = ENGINES.get(self.engine_name).Options
        try:
            given = options_cls.model_validate(self.engine_options).model_dump(mode="json", exclude_unset=True)
        except ValidationError as exc:
            raise ConfigError(f"engine {self.engine_name!r}: bad options {self.engine_options!r}: {exc}") from exc
        exempt = getattr(options_cls, "identity_exempt", frozenset())
        return {k: v for k, v in sorted(given.items()) if k not in exempt}

    def prompt_hash(self, mode: str | None = None) -> str:
        mode = mode or self.mode
        return stable_hash(
            {
                "family": self.family_name,
                "mode": mode,
                "system": self.system_prompt(),
                "tools": self.tools(),
                "prompt": self.prompt(mode),
                "chat_kwargs": self.profile.chat_kwargs,
                # only when on, so the hash (and the resume key) of unconstrained runs stays what it was
                **({"constrained": True} if self.constrained else {}),
            }
        )

    def _make_constraint(self) -> dict[str, Any]:
        """--constrained: hold every output to the profile's tool call (ConfigError where that means nothing)."""
        from capmill.engines import ENGINES

        if self.profile.output != "tool_call":
            raise ConfigError(
                f"--constrained holds structured output to its schema; profile {self.profile.name!r} writes free text"
            )
        if not ENGINES.get(self.engine_name).supports_constrained:
            raise ConfigError(f"engine {self.engine_name!r} cannot constrain decoding; use --engine transformers")
        from capmill.schema import EMIT_CAPTION_TOOL, TOOL_NAME

        tool = next((t for t in self.tools() or [] if t.get("function", t).get("name") == TOOL_NAME), None)
        return {"tool_call": tool or EMIT_CAPTION_TOOL}

    # ---- inputs ----
    def to_item(self, value: Any, index: int = 0) -> Item:
        """A path, PIL image, caption text (text mode) or Item -> Item; never raises (errors ride on the Item)."""
        if isinstance(value, Item):
            return value
        if hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "tobytes"):  # PIL image
            digest = sha256_hex(f"{value.mode}:{value.size}".encode() + value.tobytes())
            return Item(id=f"image-{index}", source=f"<image {index}>", kind="image", image=value, _hash=digest)
        text = str(value)
        path = Path(text)
        is_file = len(text) < 4096 and "\n" not in text and path.is_file()
        if self.mode == "text":
            if is_file and path.suffix.lower() in TEXT_SUFFIXES:
                return Item(id=path.stem, source=text, kind="text", text=path.read_text(encoding="utf-8").strip())
            return Item(id=f"text-{index}", source=f"<text {index}>", kind="text", text=text)
        if not is_file:
            return Item(id=path.stem or f"input-{index}", source=text, error="file not found")
        from capmill.data.video import is_video_path

        kind = "video" if is_video_path(path) else "image"
        return Item(id=path.stem, source=text, kind=kind, data=path.read_bytes())

    def prepare(self, item: Item, mode: str | None = None) -> Request:
        """Decode the image / video or take the text, and build the card's prompt; InputError when unusable."""
        return self.preparer().build(item, mode)

    def preparer(self) -> RequestBuilder:
        """What `prepare` does, as plain data that pickles: the pipeline's decode workers build Requests with it."""
        return RequestBuilder(
            family_name=self.family_name,
            mode=self.mode,
            prompts={mode: self.prompt(mode) for mode in self.profile.modes},
            system=self.system_prompt(),
            decoding=self.decoding,
            tools=self.tools(),
            chat_kwargs=dict(self.profile.chat_kwargs or {}),
            constraint=self._constraint,
            video_fps=self.video_fps,
            video_frames=self.video_frames,
            max_video_frames=self.max_video_frames,
            _family=self.family,
        )

    # ---- model ----
    @property
    def engine(self) -> Any:
        if self._engine is None:
            from capmill.engines import ENGINES

            cls = ENGINES.get(self.engine_name)
            options = dict(self.engine_options)
            if "max_batch_size" in getattr(cls.Options, "model_fields", {}):
                options.setdefault("max_batch_size", self.batch_size)
            self._engine = cls(self.model, self.profile, options)
        return self._engine

    def fast_paths(self) -> dict[str, Any]:
        """Each fast path of the loaded engine: off, unverified, verified or disabled (and why); {} before loading."""
        return self._engine.fast_paths() if self._engine is not None else {}

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One engine batch: one Generation per Request, in order."""
        if not requests:
            return []
        return self.engine.generate(list(requests))

    def processor(self) -> Any:
        """The processor / tokenizer only (no weights): enough to render prompts."""
        if self._engine is not None and getattr(self._engine, "processor", None) is not None:
            return self._engine.processor
        if self._processor is None:
            self._processor = self.family.load_processor(self.model)
        return self._processor

    def render_prompt(self, item: Item | Any, mode: str | None = None) -> str:
        """The exact prompt text the model sees for this input (for `capmill caption --show-prompt`)."""
        item = item if isinstance(item, Item) else self.to_item(item)
        return self.family.render(self.processor(), self.prepare(item, mode))

    # ---- outputs ----
    def _record(self, item: Item, status: str, **fields: Any) -> Record:
        return Record(
            id=item.id,
            source=item.source,
            content_hash=item.content_hash,
            profile=self.profile.name,
            engine=self.engine_name,
            model=self.model_identity["model"],
            prompt_hash=self.prompt_hash(),
            decoding=self.decoding.model_dump(mode="json"),
            status=status,  # type: ignore[arg-type]
            mode=self.mode,
            **fields,
        )

    def error_record(self, item: Item, error: str, retryable: bool = False) -> Record:
        """The record of an input that could not be captioned: final (the input is bad) unless `retryable`."""
        return self._record(item, "error", error=error, error_kind="retryable" if retryable else "final")

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        """Parse one Generation into a Record: the schema parser for tool calls, grounding in text mode."""
        tokens = {"prompt": generation.prompt_tokens, "completion": generation.completion_tokens}
        common = {"raw": generation.text, "timings": dict(generation.timings), "tokens": tokens}
        if generation.error:  # the engine's failure: retryable unless the engine says the input is at fault
            kind = "final" if generation.retryable is False else "retryable"
            return self._record(item, "error", error=generation.error, error_kind=kind, **common)
        notes = [] if generation.finish_reason != "length" else ["stopped at max_new_tokens"]
        if self.profile.output == "tool_call":
            from capmill.schema import parse_tool_call

            source_text = item.text if self.mode == "text" else None
            result = parse_tool_call(generation.text, source_text=source_text, repair=True)
            structured = _as_dict(result.caption)
            grounding = _as_dict(getattr(result, "grounding", None))
            errors = [str(e) for e in (result.errors or [])]
            return self._record(
                item,
                result.status,
                caption=caption_text(structured) if structured else None,
                structured=structured,
                error="; ".join(errors) if result.status == "invalid" else None,
                notes=notes + errors,
                grounding=grounding,
                **common,
            )
        text = generation.text.strip()
        if not text:
            return self._record(item, "invalid", error="empty output", notes=notes, **common)
        return self._record(item, "ok", caption=text, notes=notes, **common)

    def caption(self, inputs: Iterable[Any]) -> list[Record]:
        """Caption everything, batched and grouped by size; bad inputs become error records, order is kept."""
        return list(self.iter_captions(inputs))

    def iter_captions(self, inputs: Iterable[Any]) -> Iterator[Record]:
        """`caption`, streamed: inputs are read a window (8 batches) at a time and records come in input order, so
        memory holds one window whatever the number of inputs."""
        window = self.batch_size * 8
        values = iter(inputs)
        index = 0
        while True:
            chunk = list(itertools.islice(values, window))
            if not chunk:
                return
            items = [self.to_item(value, index + k) for k, value in enumerate(chunk)]
            index += len(chunk)
            records: list[Record | None] = [None] * len(items)
            prepared: list[tuple[int, Request, float]] = []
            for i, item in enumerate(items):
                t0 = time.perf_counter()
                try:
                    request = self.prepare(item)
                except InputError as exc:
                    records[i] = self.error_record(item, str(exc), exc.retryable)
                    continue
                prepared.append((i, request, time.perf_counter() - t0))
            # the whole window goes to the engine, which groups it by token length into batches of batch_size
            generations = self.generate([r for _, r, _ in prepared])
            for (i, request, prep_time), generation in zip(prepared, generations, strict=True):
                record = self.finish(items[i], request, generation)
                record.timings["prepare"] = prep_time
                records[i] = record
            yield from (r for r in records if r is not None)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decoding(base: Decoding, override: dict[str, Any] | Decoding | None) -> Decoding:
    if override is None:
        return base
    if isinstance(override, Decoding):
        return override
    changes = {k: v for k, v in override.items() if v is not None}
    if changes.get("do_sample") is False:  # greedy: the sampling knobs no longer apply
        changes.update({k: None for k in ("temperature", "top_p", "top_k") if k not in changes})
    try:
        return Decoding.model_validate({**base.model_dump(), **changes})
    except Exception as exc:
        raise ConfigError(f"bad decoding settings {override!r}: {exc}") from exc


def _as_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return value
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else {"value": value}


def caption_text(structured: dict[str, Any]) -> str:
    """A one-line rendering of a structured caption: subjects with attributes; actions; setting."""
    subjects = []
    for subject in structured.get("subjects") or []:
        attributes = " ".join(a for a in subject.get("attributes") or [] if a)
        subjects.append(f"{attributes} {subject.get('name', '')}".strip())
    parts = [", ".join(s for s in subjects if s)]
    actions = [a for a in structured.get("actions") or [] if a]
    if actions:
        parts.append("; ".join(actions))
    setting = structured.get("setting")
    if setting and setting != "unknown":
        parts.append(setting)
    return " | ".join(p for p in parts if p)
