"""The one contract every engine keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from capmill.errors import EngineOptionError
from capmill.records import Generation, Request

if TYPE_CHECKING:
    from capmill.models.profile import Profile


class EngineOptions(BaseModel):
    """Knobs common to engines; each engine subclasses this as its nested `Options`."""

    model_config = ConfigDict(extra="forbid")

    # Options that do not change outputs, left out of a run's identity (its resume key); every other option the
    # user sets is part of it. Where the model runs (device), how many threads and the batch size only move
    # floating point within rounding, as batching does; `--exact` is the guarantee where that matters. An engine
    # extends this set: `identity_exempt = EngineOptions.identity_exempt | {"timeout"}`.
    identity_exempt: ClassVar[frozenset[str]] = frozenset({"device", "max_batch_size", "threads"})

    @classmethod
    def checked(cls, engine: str, options: EngineOptions | dict[str, Any] | None) -> EngineOptions:
        """The options validated; EngineOptionError naming the key, the problem and every key this engine accepts."""
        if isinstance(options, cls):
            return options
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise EngineOptionError(engine, _problems(exc), sorted(cls.model_fields)) from exc


def _problems(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "options"
        if err.get("type") == "extra_forbidden":
            out.append(f"unknown option {key!r}")
        else:
            out.append(f"{key}={err.get('input')!r}: {err.get('msg')}")
    return "; ".join(out)


class Engine(ABC):
    """Generates text for batches of Requests.

    Capabilities are class flags; knobs are the nested pydantic `Options`. `generate` returns one
    Generation per Request, in order; a failure of one item is a Generation with `error` set, while a
    failure of the whole engine raises EngineError.
    """

    name: ClassVar[str] = "engine"
    supports_video: ClassVar[bool] = False
    supports_constrained: ClassVar[bool] = False
    families: ClassVar[frozenset[str] | None] = None  # None: every family

    Options: ClassVar[type[EngineOptions]] = EngineOptions

    def __init__(self, model: str, profile: Profile, options: EngineOptions | dict[str, Any] | None = None):
        self.model = model
        self.profile = profile
        self.options = self.Options.checked(self.name, options)

    @classmethod
    def uses_host_cpu(cls, options: dict[str, Any]) -> bool:
        """Whether, with these options, the model computes on this machine's CPU cores (not a GPU, not a server).

        The pipeline then decodes images in turns with the model instead of beside it: a model on the CPU keeps
        every core busy, and decoding beside it only slows it down (docs/benchmarks.md, throughput)."""
        return False

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One Generation per Request, same order."""

    def describe(self) -> dict[str, Any]:
        """What goes into a run manifest: engine name, model, revision if known, options."""
        return {"engine": self.name, "model": self.model, "options": self.options.model_dump(mode="json")}

    def fast_paths(self) -> dict[str, dict[str, Any]]:
        """Each fast path this engine has (fast_paths.py): its state (off, unverified, verified, disabled) and why."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model and any worker; safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
