"""Retry attempts with another model: `attempts: [{model: ID_OR_PATH, profile: ..., engine: ...}]` in a gate policy.

Each attempt that names a model gets its own Captioner, built (and so checked: profile, family, mode, engine
options, whether the engine runs that family) when the run starts, before any weights load. Its weights load
the first time an item reaches that attempt, once per run (attempts naming the same model, profile, engine and
options share one), and close with the run's captioner. The retry is that model's own request for the item,
built from the input as decoded for the run (not from the first model's resized copy), so its caption is the
one that model gives the photo captioned directly with the same flags.

The decode workers keep the decoded input beside each request (`SourcedRequest.source_item`) only when the policy
has a model attempt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from capmill.errors import ConfigError
from capmill.models.request_builder import RequestBuilder
from capmill.quality.policy import GatePolicy
from capmill.records import Generation, Item, Request


@dataclass
class SourcedRequest(Request):
    """A Request that keeps the input it was built from, for a retry model to build its own request."""

    source_item: Item | None = field(default=None, repr=False, compare=False)


@dataclass
class SourceKeepingBuilder(RequestBuilder):
    """RequestBuilder whose Requests carry their input (decoded image, video bytes or text)."""

    def build(self, item: Item, mode: str | None = None) -> Request:
        if item.kind == "image" and item.image is None and item.data is not None and not item.error:
            from capmill.data.images import decode_image

            item = dataclasses.replace(item, image=decode_image(item.data, item.source), _hash=item.content_hash)
        request = super().build(item, mode)
        kept = dataclasses.replace(item, data=None if item.image is not None else item.data, _hash=item.content_hash)
        values = {f.name: getattr(request, f.name) for f in dataclasses.fields(Request)}
        return SourcedRequest(**values, source_item=kept)

    @classmethod
    def of(cls, builder: RequestBuilder) -> SourceKeepingBuilder:
        return cls(**{f.name: getattr(builder, f.name) for f in dataclasses.fields(RequestBuilder)})


def model_attempts(policy: GatePolicy | None) -> list[int]:
    """Indexes of the policy's retries that name a model."""
    if policy is None:
        return []
    return [i for i, attempt in enumerate(policy.retries()) if attempt.model is not None]


class RetryModels:
    """The captioners of a policy's model attempts, by attempt index (see the module docstring)."""

    def __init__(self, policy: GatePolicy, main: Any, options: dict[str, Any]):
        """`main`: the run's Captioner; `options`: the Captioner keyword arguments it was made with (decoding,
        prompt, batch size... carry over to each retry model, as the same flags would)."""
        from capmill.captioner import Captioner
        from capmill.engines import ENGINES
        from capmill.quality.budget_decoding import resolve_method

        self.main = main
        self.captioners: dict[int, Any] = {}
        self.methods: dict[int, str] = {}
        shared: dict[str, Any] = {}
        for i in model_attempts(policy):
            attempt = policy.attempts[i]
            where = f"gate: attempts[{i}].model {attempt.model!r}"
            engine = attempt.engine or main.engine_name
            engine_options = attempt.engine_options
            if engine_options is None:
                engine_options = dict(main.engine_options) if engine == main.engine_name else {}
            key = repr((attempt.model, attempt.profile, engine, sorted(engine_options.items())))
            try:
                if key not in shared:
                    captioner = Captioner(
                        model=attempt.model,
                        profile=attempt.profile,
                        engine=engine,
                        mode=main.mode,
                        prompt=options.get("prompt"),
                        decoding=options.get("decoding"),
                        engine_options=engine_options,
                        batch_size=main.batch_size,
                        video_fps=options.get("video_fps"),
                        video_frames=options.get("video_frames"),
                    )
                    families = ENGINES.get(engine).families
                    if families is not None and captioner.family_name not in families:
                        raise ConfigError(f"engine {engine!r} cannot run {captioner.family_name} models")
                    captioner.identity_options()  # a bad engine option fails now
                    shared[key] = captioner
                self.captioners[i] = shared[key]
                if policy.budget is not None:
                    profile = self.captioners[i].profile
                    self.methods[i] = resolve_method(policy.budget, engine, profile.output, where=where + ": budget")
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc

    def has(self, index: int) -> bool:
        return index in self.captioners

    def name(self, index: int) -> str:
        return self.captioners[index].model_identity["model"]

    def output(self, index: int) -> str:
        return self.captioners[index].profile.output

    def budget_method(self, index: int) -> str:
        return self.methods.get(index, "rewrite")

    def request(self, index: int, request: Request) -> Request:
        """The retry model's own request for the item behind `request`; InputError when it cannot take it."""
        item = getattr(request, "source_item", None)
        if item is None:  # built without its input kept: the image as the first model saw it
            from capmill.quality.requests import request_image

            item = Item(id=request.item_id, source=request.item_id, kind="image", image=request_image(request))
        return self.captioners[index].prepare(item)

    def generate(self, index: int, requests: list[Request]) -> list[Generation]:
        """Generations of the retry model (its weights load on the first call)."""
        return self.captioners[index].generate(requests)

    def identity(self) -> list[dict[str, Any]]:
        """What the retry models add to the run's identity: each one's settings, by attempt index."""
        out = []
        for i, captioner in sorted(self.captioners.items()):
            out.append({"attempt": i, **captioner.settings()})
        return out

    def close(self) -> None:
        for captioner in {id(c): c for c in self.captioners.values()}.values():
            captioner.close()
