"""One recipe stage as a captioner the run machinery drives: per-item prompts, its constraint, its identity.

`StageCaptioner` wraps a `Captioner`: its settings (the run folder's identity) add the stage's templates,
constraints and the identities of the stages it reads; its request builder takes each item's rendered prompt
from the item (the stage source rendered it); its records say which stage and prompt variant made them, and
are checked against the stage's word constraints.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from capmill.models.request_builder import RequestBuilder
from capmill.recipes.spec import Constraints, Stage
from capmill.records import Generation, Item, Record, Request, sha256_hex, stable_hash

PROMPT_KEY = "recipe_prompt"  # item.meta: the rendered prompt of an image stage
VARIANT_KEY = "recipe_variant"  # item.meta: the prompt-set variant
BASE_ID_KEY = "recipe_id"  # item.meta: the input's id (a prompt set's items are "ID#VARIANT")


@dataclass
class StageItem(Item):
    """An item whose content key also covers its rendered prompt: two inputs with the same image bytes but
    different prompts (metadata, variants) are two captions, not one caption and a copy."""

    salt: str = ""

    @property
    def content_hash(self) -> str:  # type: ignore[override]
        if self._hash is None:
            base = Item.content_hash.fget(self)  # type: ignore[attr-defined]
            self._hash = sha256_hex(f"{base}\x00{self.salt}") if self.salt else base
        return self._hash


@dataclass
class TemplatedBuilder(RequestBuilder):
    """The captioner's RequestBuilder, with the item's own rendered prompt (it pickles to decode workers)."""

    def build(self, item: Item, mode: str | None = None) -> Request:
        prompt = item.meta.get(PROMPT_KEY)
        if prompt is None:
            return super().build(item, mode)
        mode = mode or self.mode
        return RequestBuilder.build(dataclasses.replace(self, prompts={**self.prompts, mode: prompt}), item, mode)


class StageCaptioner:
    """What the pipeline drives for one stage (the CaptionerLike protocol of capmill.run.pipeline)."""

    def __init__(self, stage: Stage, captioner: Any, identity: dict[str, Any]):
        self.stage, self.inner, self.identity = stage, captioner, identity
        self.identity_hash = stable_hash(identity)
        constraints = stage.constraints
        self.constraint = {"grammar": constraints.grammar()} if constraints is not None else None

    # what the run folder and pipeline read
    @property
    def mode(self) -> str:
        return self.inner.mode

    @property
    def profile(self) -> Any:
        return self.inner.profile

    @property
    def engine(self) -> Any:  # a property, so the pipeline loads the weights only when there is work
        return self.inner.engine

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "recipe_stage": self.identity}

    def preparer(self) -> Any:
        base = self.inner.preparer()
        if not isinstance(base, RequestBuilder):  # a tagger stage: no prompt to put in
            return base
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        if self.constraint is not None:
            fields["constraint"] = self.constraint
        return TemplatedBuilder(**fields)

    def prepare(self, item: Item, mode: str | None = None) -> Request:
        return self.preparer().build(item, mode)

    def generate(self, requests: list[Request]) -> list[Generation]:
        return self.inner.generate(requests)

    def finish(self, item: Item, request: Request | None, generation: Generation) -> Record:
        record = self._tag(self.inner.finish(item, request, generation), item)
        if record.ok and record.caption is not None and self.stage.constraints is not None:
            if self.stage.constraints.banned and generation.finish_reason == "length":
                record.caption, cut = trim_banned_tail(record.caption, self.stage.constraints.banned)
                if cut:
                    record.notes = [*record.notes, f"removed {cut!r}: the token budget ended the output inside it"]
            if self.stage.constraints.tags is not None:  # a repeat an engine let through (docs/recipes.md)
                record.caption, removed = dedupe_tags(record.caption, self.stage.constraints.prefix)
                if removed:
                    record.notes = [*record.notes, f"removed repeated tags: {', '.join(removed)}"]
        if record.ok and record.caption is not None and self.stage.constraints is not None:
            problems = check_text(record.caption, self.stage.constraints)
            if problems:
                record.status = "invalid"
                record.error = "; ".join(problems)
                record.notes = [*record.notes, *problems]
        return record

    def error_record(self, item: Item, error: Any) -> Record:
        return self._tag(self.inner.error_record(item, str(error)), item)

    def _tag(self, record: Record, item: Item) -> Record:
        record.prompt_hash = self.identity_hash
        recipe = {"stage": self.stage.name}
        for key, name in ((VARIANT_KEY, "variant"), ("recipe_order", "order"), (BASE_ID_KEY, "id")):
            if item.meta.get(key) is not None:
                recipe[name] = item.meta[key]
        if item.meta.get(PROMPT_KEY) is not None:
            recipe["prompt"] = item.meta[PROMPT_KEY]
        record.meta = {**record.meta, "recipe": recipe}
        return record

    def close(self) -> None:
        self.inner.close()


_WORD = re.compile(r"[\w']+", re.UNICODE)


def check_text(text: str, constraints: Constraints) -> list[str]:
    """What an output breaks of its stage's constraints (an output the token budget cut, or an engine that
    enforces only part of them); [] when it keeps them all."""
    problems = []
    if constraints.prefix and not text.startswith(constraints.prefix.strip()):
        problems.append(f"does not start with {constraints.prefix!r}")
    lowered = " ".join(_WORD.findall(text.lower()))
    for word in constraints.banned:
        if _has_phrase(lowered, word):
            problems.append(f"banned word {word!r} present")
    for word in constraints.required:
        if not _has_phrase(lowered, word):
            problems.append(f"required word {word!r} missing")
    if constraints.tags is not None and not isinstance(constraints.tags, str):
        body = text[len(constraints.prefix) :] if text.startswith(constraints.prefix) else text
        tags = [t.strip() for t in body.split(",") if t.strip()]
        vocabulary = set(constraints.tags)
        unknown = [t for t in tags if t not in vocabulary]
        if unknown:
            problems.append(f"tags not in the vocabulary: {', '.join(unknown[:5])}")
        if len(set(tags)) != len(tags):
            problems.append("a tag appears twice")
        if constraints.max_tags is not None and len(tags) > constraints.max_tags:
            problems.append(f"{len(tags)} tags, more than {constraints.max_tags}")
    if constraints.max_words is not None and len(text.split()) > constraints.max_words:
        problems.append(f"{len(text.split())} words, more than {constraints.max_words}")
    return problems


def trim_banned_tail(text: str, banned: tuple[str, ...]) -> tuple[str, str]:
    """A budget-cut output ending in a banned word (the grammar allowed it only as the start of a longer word) without
    it; (text, what was removed)."""
    for phrase in banned:
        body = r"\s+".join(re.escape(w) for w in phrase.split())
        match = re.search(r"(?i)(^|[^\w])" + body + r"\W*$", text)
        if match:
            start = match.start() + len(match.group(1))
            return text[:start].rstrip(), text[start:]
    return text, ""


def dedupe_tags(text: str, prefix: str = "") -> tuple[str, list[str]]:
    """A tag list with each tag once (the first time it appears), and the repeats removed."""
    head = prefix if prefix and text.startswith(prefix) else ""
    seen: list[str] = []
    removed = []
    for tag in text[len(head) :].split(", "):
        if tag in seen:
            removed.append(tag)
        else:
            seen.append(tag)
    return head + ", ".join(seen), removed


def _has_phrase(lowered_words: str, phrase: str) -> bool:
    target = " ".join(_WORD.findall(phrase.lower()))
    return bool(target) and re.search(rf"(^| ){re.escape(target)}( |$)", lowered_words) is not None
