"""Grounding: does every subject name, attribute and action trace back to the words of the source text?

The teacher data behind the JSON captioner was filtered to grounding rate 1.0, so an ungrounded item is a
hallucination signal. Words are compared after case folding, possessive removal, light plural / inflection
normalisation (chairs~chair, riding~ride, sitting~sit, knives~knife, men~man) and hyphen/space variants
(t-shirt~t shirt~tshirt, skate board~skateboard). Function words (articles, be, pronouns, of, and) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from capmill.schema.caption import StructuredCaption

_WORD = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"['’]s\b")
_STOP = frozenset(
    "a an the is are was were be been being it its it's of and that this these those which who whom there their "
    "them they his her hers he she him some".split()
)
_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "persons": "person",
    "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "dice": "die",
    "knives": "knife", "wives": "wife", "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "loaves": "loaf",
    "halves": "half", "calves": "calf", "lying": "lie", "dying": "die", "tying": "tie", "sat": "sit",
    "stood": "stand", "held": "hold", "ran": "run", "ate": "eat", "flew": "fly", "wore": "wear", "worn": "wear",
    "rode": "ride", "ridden": "ride", "grew": "grow", "grown": "grow", "hung": "hang", "lit": "light",
    "laid": "lay", "built": "build", "made": "make", "taken": "take", "took": "take", "thrown": "throw",
    "threw": "throw", "caught": "catch", "swam": "swim", "drove": "drive", "driven": "drive", "fell": "fall",
    "fallen": "fall", "kept": "keep", "slept": "sleep", "spread": "spread",
}  # fmt: skip
_NUMBERS = dict(
    zip("0 1 2 3 4 5 6 7 8 9 10 11 12".split(),
        "zero one two three four five six seven eight nine ten eleven twelve".split(), strict=True)
)  # fmt: skip
_NUMBERS.update({word: digit for digit, word in list(_NUMBERS.items())})


@lru_cache(maxsize=1 << 16)
def _forms(word: str) -> frozenset[str]:
    """The word and the base forms it may be an inflection of; two words match when their forms meet."""
    forms = {word}
    extra = _IRREGULAR.get(word) or _NUMBERS.get(word)
    if extra:
        forms.add(extra)
    size = len(word)
    if size > 3 and word.endswith("ies"):
        forms.update((word[:-3] + "y", word[:-1]))
    if size > 3 and word.endswith("ves"):
        forms.update((word[:-3] + "f", word[:-3] + "fe", word[:-1]))
    if size > 3 and word.endswith("es"):
        forms.update((word[:-2], word[:-1]))
    elif size > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        forms.add(word[:-1])
    for suffix in ("ing", "ed"):
        if size > len(suffix) + 2 and word.endswith(suffix):
            stem = word[: -len(suffix)]
            forms.update((stem, stem + "e"))
            if stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
                forms.add(stem[:-1])  # sitting -> sit, running -> run (not "falls"/"dressed")
            if suffix == "ed" and stem.endswith("i"):
                forms.add(stem[:-1] + "y")  # carried -> carry
    if size > 2 and word.endswith("e"):
        forms.add(word[:-1])  # ride ~ rid(ing)
    return frozenset(forms)


def _words(text: str) -> list[str]:
    return _WORD.findall(_POSSESSIVE.sub("", text.casefold()))


def source_index(source_text: str) -> frozenset[str]:
    """Every form of every source word, plus joined neighbours so "skate board" matches "skateboard"."""
    words = _words(source_text)
    index: set[str] = set()
    for word in words:
        index |= _forms(word)
    for left, right in zip(words, words[1:], strict=False):
        index |= _forms(left + right)
    return frozenset(index)


def _missing(phrase: str, index: frozenset[str]) -> list[str]:
    """The words of `phrase` that do not trace back to the source index."""
    words = _words(phrase)
    content = [w for w in words if w not in _STOP] or words
    found = [not _forms(w).isdisjoint(index) for w in content]
    for i in range(len(content) - 1):  # "t shirt" vs source "tshirt": try each joined pair
        if not (found[i] and found[i + 1]) and not _forms(content[i] + content[i + 1]).isdisjoint(index):
            found[i] = found[i + 1] = True
    return [w for w, ok in zip(content, found, strict=True) if not ok]


ItemKind = Literal["name", "attribute", "action"]


@dataclass(frozen=True)
class GroundedItem:
    """One subject name, attribute or action, and whether all its words trace back to the source."""

    kind: ItemKind
    text: str
    grounded: bool
    missing: tuple[str, ...] = ()
    subject: int | None = None  # index of the subject a name or attribute belongs to


@dataclass(frozen=True)
class GroundingReport:
    """Per-item grounding and the overall rate (1.0 when there is nothing to ground)."""

    items: tuple[GroundedItem, ...]

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def grounded(self) -> int:
        return sum(item.grounded for item in self.items)

    @property
    def rate(self) -> float:
        return self.grounded / self.total if self.items else 1.0

    @property
    def ungrounded(self) -> list[GroundedItem]:
        return [item for item in self.items if not item.grounded]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "grounded": self.grounded,
            "total": self.total,
            "ungrounded": [{"kind": i.kind, "text": i.text, "missing": list(i.missing)} for i in self.ungrounded],
        }


def ground(caption: StructuredCaption, source_text: str) -> GroundingReport:
    """Check every subject name, attribute and action of `caption` against `source_text`."""
    index = source_index(source_text)
    items: list[GroundedItem] = []

    def add(kind: ItemKind, text: str, subject: int | None) -> None:
        missing = _missing(text, index)
        items.append(GroundedItem(kind, text, not missing, tuple(missing), subject))

    for number, subject in enumerate(caption.subjects):
        add("name", subject.name, number)
        for attribute in subject.attributes:
            add("attribute", attribute, number)
    for action in caption.actions:
        add("action", action, None)
    return GroundingReport(tuple(items))
