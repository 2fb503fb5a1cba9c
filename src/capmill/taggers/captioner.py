"""A WD tagger as the run pipeline's captioner: each image's tags become its record (a recipe's tagger stage).

`TaggerCaptioner` has the methods the pipeline drives (`settings`, `preparer`, `generate`, `finish`,
`error_record`, `engine`), so a tagger runs through the ordinary run folder, exactly once and resumable. A record's
`caption` is the tags comma-joined and its `tags` the tagger's full output (`capmill.taggers.wd.Tags.to_dict`).
The tags of an image are those `WDTagger.tag` gives for the decoded image itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capmill.errors import InputError, MissingDependencyError
from capmill.records import Decoding, Generation, Item, Record, Request, stable_hash
from capmill.taggers.wd import TaggerOptions, tagger_identity

MODE = "tags"
ENGINE = "onnxruntime"
PROFILE = "wd-tagger"


@dataclass
class TagRequestBuilder:
    """One image -> a Request holding it (no prompt); plain data, so the pipeline's decode workers use it."""

    def build(self, item: Item, mode: str | None = None) -> Request:
        if item.error:
            reason, _, detail = item.error.partition(": ")
            raise InputError(item.source, reason, detail)
        if item.kind != "image":
            raise InputError(item.source, f"a tagger reads images, not {item.kind}")
        image = item.image
        if image is None:
            from capmill.data.images import decode_image

            image = decode_image(item.data, item.source)
        request = Request(item_id=item.id, messages=[], decoding=Decoding(), images=[image])
        if item.data is not None:
            request.content_hash = item.content_hash
        return request


class TaggerCaptioner:
    """A WD-format ONNX tagger under its options; the ONNX session starts on the first batch (`engine`)."""

    mode = MODE
    profile = None  # no language model, no profile: nothing of a card's image downscaling applies

    def __init__(self, options: TaggerOptions, providers: list[str] | None = None):
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:  # before any work, as the tagger itself would
            raise MissingDependencyError("onnxruntime", "tag", "WD taggers")
        self.options, self.providers = options, providers
        self.model_identity = tagger_identity(options.model)  # ModelLoadError when its files are missing
        self._tagger: Any = None

    def settings(self) -> dict[str, Any]:
        """What identifies the tags: the tagger's files (fingerprint) and every option that changes them."""
        return {
            "profile": PROFILE,
            "engine": ENGINE,
            "mode": MODE,
            "model": self.model_identity["model"],
            "model_fingerprint": self.model_identity["fingerprint"],
            "tagger": self.options.model_dump(mode="json", exclude={"model", "batch_size"}),
        }

    def memory(self, stage: str) -> Any:
        """The recipe's memory estimate of this stage: the ONNX model's size, plus the margin of any stage."""
        from capmill.recipes.memory import MARGIN_BYTES, MARGIN_FRACTION, StageMemory
        from capmill.taggers.wd import _files

        size = _files(self.options.model)[0].stat().st_size
        estimate = size + int(size * MARGIN_FRACTION) + MARGIN_BYTES
        return StageMemory(stage, self.model_identity["model"], "cpu", size, estimate, "the ONNX file's size")

    @property
    def engine(self) -> Any:
        if self._tagger is None:
            from capmill.taggers.wd import WDTagger

            self._tagger = WDTagger(self.options, self.providers)
        return self._tagger

    def preparer(self) -> TagRequestBuilder:
        return TagRequestBuilder()

    def prepare(self, item: Item, mode: str | None = None) -> Request:
        return self.preparer().build(item, mode)

    def generate(self, requests: list[Request]) -> list[Generation]:
        if not requests:
            return []
        found = self.engine.tag([request.images[0] for request in requests])
        return [Generation(text=", ".join(tags.tags), tags=tags.to_dict()) for tags in found]

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        if generation.error:
            kind = "final" if generation.retryable is False else "retryable"
            return self._record(item, "error", error=generation.error, error_kind=kind)
        tags = generation.tags or {"tags": []}
        notes = [] if tags["tags"] else ["no tag above the thresholds"]
        return self._record(item, "ok", caption=generation.text, tags=tags, notes=notes)

    def error_record(self, item: Item, error: str, retryable: bool = False) -> Record:
        return self._record(item, "error", error=error, error_kind="retryable" if retryable else "final")

    def _record(self, item: Item, status: str, **fields: Any) -> Record:
        return Record(
            id=item.id,
            source=item.source,
            content_hash=item.content_hash,
            profile=PROFILE,
            engine=ENGINE,
            model=self.model_identity["model"],
            prompt_hash=stable_hash(self.settings()),
            decoding={},
            status=status,  # type: ignore[arg-type]
            mode=MODE,
            **fields,
        )

    def close(self) -> None:
        self._tagger = None


def tagger_captioner(options: TaggerOptions, where: str) -> TaggerCaptioner:
    """A recipe's tagger stage; a tagger whose files are missing is a ConfigError naming `where` and the field."""
    from capmill.errors import ConfigError, ModelLoadError

    try:
        return TaggerCaptioner(options)
    except ModelLoadError as exc:
        raise ConfigError(f"{where}, field 'tagger.model': {exc}") from exc
