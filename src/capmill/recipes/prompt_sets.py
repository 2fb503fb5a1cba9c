"""Prompt sets: caption styles x lengths x extra options, every combination per image or one seeded pick.

The random pick depends only on the set's seed and the item's id, so a resumed run (or another machine) picks
the same prompt for the same item.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from capmill.recipes.spec import Option, PromptSet
from capmill.recipes.template import Template
from capmill.records import sha256_hex


@dataclass(frozen=True)
class Variant:
    name: str  # "style", "style.length", "style.length.extra"
    style: str
    template: Template
    length: str = ""
    extra: str = ""


def _options(dimension: dict[str, str | Option]) -> list[tuple[str, Option]]:
    return [(name, o if isinstance(o, Option) else Option(text=o)) for name, o in dimension.items()]


def _build(prompt_set: PromptSet, style: str, length: str | None, extra: str | None, where: str) -> Variant:
    styles = dict(_options(prompt_set.styles))
    lengths, extras = dict(_options(prompt_set.lengths)), dict(_options(prompt_set.extras))
    text = styles[style].text
    length_text = lengths[length].text if length else ""
    extra_text = extras[extra].text if extra else ""
    # the style names where its length and extra go; otherwise they follow it
    for key, value in (("length", length_text), ("extra", extra_text)):
        placeholder = "{" + key + "}"
        if placeholder in text:
            text = text.replace(placeholder, value.replace("{", "{{").replace("}", "}}"))
        elif value:
            text = f"{text} {value}"
    name = ".".join(p for p in (style, length, extra) if p)
    return Variant(name, style, Template.parse(text, where), length or "", extra or "")


def variants(prompt_set: PromptSet, where: str = "prompt_set") -> list[Variant]:
    """Every combination, in the order the styles, lengths and extras are listed."""
    lengths = list(prompt_set.lengths) or [None]
    extras = list(prompt_set.extras) or [None]
    return [
        _build(prompt_set, s, length, extra, where)
        for s, length, extra in itertools.product(prompt_set.styles, lengths, extras)
    ]


def pick(prompt_set: PromptSet, item_id: str, where: str = "prompt_set") -> Variant:
    """One weighted random combination for this item: a style, a length and an extra, each by its weights."""
    rng = random.Random(int(sha256_hex(f"{prompt_set.seed}\x00{item_id}")[:16], 16))

    def choose(dimension: dict[str, str | Option]) -> str | None:
        options = _options(dimension)
        if not options:
            return None
        weights = [o.weight for _, o in options]
        if not any(weights):
            weights = [1.0] * len(options)
        return rng.choices([name for name, _ in options], weights=weights)[0]

    style = choose(prompt_set.styles)
    assert style is not None
    return _build(prompt_set, style, choose(prompt_set.lengths), choose(prompt_set.extras), where)


def for_item(prompt_set: PromptSet, item_id: str, where: str = "prompt_set") -> list[Variant]:
    """The variants this item is captioned with: all of them, or its one seeded pick."""
    return variants(prompt_set, where) if prompt_set.choose == "all" else [pick(prompt_set, item_id, where)]
