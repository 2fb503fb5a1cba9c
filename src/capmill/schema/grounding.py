"""Grounding: does every subject name, attribute and action trace back to the words of the source text?

The teacher data behind the JSON captioner was filtered to grounding rate 1.0, so an ungrounded item is a
hallucination signal. Words are compared by their English lemmas (lemminflect's dictionary, shipped in its
wheel: sang~sing, bought~buy, knives~knife, men~man, and never cares~cars), after case folding and possessive
removal, with hyphen/space variants (t-shirt~t shirt~tshirt, skate board~skateboard) and digits~number words.
Function words (articles, be, pronouns, of, and) are ignored. Numbers and plurals count: a quantity in the
phrase ("two dogs", "dogs", "a dog") must agree with some mention of the same noun in the source, so "two dogs"
is not grounded in "a dog and 2 cats" and "dogs" is not grounded in "a dog".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Union

from capmill.schema.caption import StructuredCaption

_WORD = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"['’]s\b")
_STOP = frozenset(
    "a an the is are was were be been being it its it's of and that this these those which who whom there their "
    "them they his her hers he she him some".split()
)
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)
_NUMBERS: dict[str, int] = {word: value for value, word in enumerate(_NUMBER_WORDS)}
_NUMBERS.update({str(value): value for value in range(len(_NUMBER_WORDS))})
_NUMBERS.update({"a": 1, "an": 1, "single": 1, "pair": 2, "couple": 2, "dozen": 12})
_MANY = frozenset("several many few multiple numerous various lots group groups crowd herd flock".split())
# Words that end the look-back from a noun to its quantity word ("a dog and two cats": "cats" stops at "and").
_BOUNDARY = frozenset(
    "the and or with of on in at by to from under over near behind beside for while into onto is are was were "
    "this that these those his her their its".split()
)
_PLURAL_ONLY = {"people": "person", "folks": "folk"}  # plural nouns whose dictionary lemma is themselves

Quantity = Union[int, Literal["many"], None]


def _lemmas(word: str) -> dict[str, tuple[str, ...]]:
    import lemminflect  # lazy: its dictionary loads on first use (about 0.3 s)

    return lemminflect.getAllLemmas(word) or lemminflect.getAllLemmasOOV(word, "NOUN")


@lru_cache(maxsize=1 << 16)
def _forms(word: str) -> frozenset[str]:
    """The word, its lemmas, and the number it names; two words match when their forms meet."""
    forms = {word}
    for lemmas in _lemmas(word).values():
        forms.update(lemmas)
    if word in _PLURAL_ONLY:
        forms.add(_PLURAL_ONLY[word])
    if word in _NUMBERS and word not in ("a", "an"):
        forms.add(f"#{_NUMBERS[word]}")
    return frozenset(forms)


@lru_cache(maxsize=1 << 16)
def _noun(word: str) -> tuple[frozenset[str], bool | None, bool]:
    """(noun lemmas, plural?, also a verb form?); plural is None when the form does not say (sheep, glasses)."""
    if word in _PLURAL_ONLY:
        return frozenset({_PLURAL_ONLY[word], word}), True, False
    lemmas = _lemmas(word)
    nouns = lemmas.get("NOUN", ())
    if not nouns or word in _NUMBERS or word in _STOP:
        return frozenset(), None, False
    verb_form = any(lemma != word for lemma in lemmas.get("VERB", ()))
    plural = None if word in nouns and len(nouns) > 1 else word not in nouns
    return frozenset(nouns), plural, verb_form


def _words(text: str) -> list[str]:
    return _WORD.findall(_POSSESSIVE.sub("", text.casefold()))


def _quantity(words: list[str], at: int, *, in_phrase: bool, verbs_ambiguous: bool = False) -> Quantity:
    """How many of the noun at `words[at]` the text speaks of: a number, "many", or None when it does not say.

    An explicit quantity word within three words before the noun wins ("two dogs", "a long table", "several
    cats"); otherwise a plural form means "many". A bare singular pins one in the source but nothing in a phrase,
    since subject names are written in the singular ("chair" for "two chairs").
    """
    nouns, plural, verb_form = _noun(words[at])
    if not nouns:
        return None
    for back in range(at - 1, max(at - 4, -1), -1):
        word = words[back]
        if word in _NUMBERS:
            return _NUMBERS[word]
        if word in _MANY:
            return "many"
        if word in _BOUNDARY:
            break
    if plural is None or (verbs_ambiguous and verb_form):
        return None  # "sheep"; or "rides" in an action, which may be the verb
    if plural:
        return "many"
    return None if in_phrase else 1


def _agree(phrase: Quantity, source: Quantity) -> bool:
    if phrase is None or source is None or phrase == source:
        return True
    if phrase == "many":
        return isinstance(source, int) and source >= 2
    if source == "many":
        return isinstance(phrase, int) and phrase >= 2
    return False


@dataclass(frozen=True)
class SourceIndex:
    """Every form of every source word (plus joined neighbours) and the quantities each noun is mentioned with."""

    forms: frozenset[str]
    quantities: dict[str, tuple[Quantity, ...]]


def source_index(source_text: str) -> SourceIndex:
    """Index `source_text` once; `ground` checks each phrase against it."""
    words = _words(source_text)
    forms: set[str] = set()
    quantities: dict[str, list[Quantity]] = {}
    for at, word in enumerate(words):
        forms |= _forms(word)
        if word in ("a", "an"):
            forms.add("#1")  # "one dog" is grounded in "a dog"
        quantity = _quantity(words, at, in_phrase=False)
        for lemma in _noun(word)[0]:
            quantities.setdefault(lemma, []).append(quantity)
    for left, right in zip(words, words[1:], strict=False):
        forms |= _forms(left + right)
    return SourceIndex(frozenset(forms), {lemma: tuple(q) for lemma, q in quantities.items()})


def _missing(phrase: str, index: SourceIndex, *, action: bool = False) -> list[str]:
    """The words of `phrase` that do not trace back to the source, or whose quantity the source contradicts."""
    words = _words(phrase)
    content = [w for w in words if w not in _STOP] or words
    found = [not _forms(w).isdisjoint(index.forms) for w in content]
    for i in range(len(content) - 1):  # "t shirt" vs source "tshirt": try each joined pair
        if not (found[i] and found[i + 1]) and not _forms(content[i] + content[i + 1]).isdisjoint(index.forms):
            found[i] = found[i + 1] = True
    missing = [w for w, ok in zip(content, found, strict=True) if not ok]
    for at, word in enumerate(words):
        quantity = _quantity(words, at, in_phrase=True, verbs_ambiguous=action)
        mentions = [q for lemma in _noun(word)[0] for q in index.quantities.get(lemma, ())]
        if quantity is not None and mentions and not any(_agree(quantity, q) for q in mentions):
            count = next((w for w in reversed(words[max(at - 3, 0) : at]) if w in _NUMBERS or w in _MANY), None)
            label = f"{count} {word}" if count else word
            if label not in missing:
                missing.append(label)
    return missing


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
        missing = _missing(text, index, action=kind == "action")
        items.append(GroundedItem(kind, text, not missing, tuple(missing), subject))

    for number, subject in enumerate(caption.subjects):
        add("name", subject.name, number)
        for attribute in subject.attributes:
            add("attribute", attribute, number)
    for action in caption.actions:
        add("action", action, None)
    return GroundingReport(tuple(items))
