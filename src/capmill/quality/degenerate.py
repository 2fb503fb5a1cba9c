"""Degenerate caption text: repetition loops, refusals, wrong language. Shared by the gate and `capmill eval`.

Language identification uses py3langid (its model ships in the wheel, so it works offline); texts under four
words are not judged (short phrases are too ambiguous to name a language), and a caption whose letters are
mostly in another script than the expected language's is wrong whatever its length.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

WORD = re.compile(r"\w+(?:'\w+)?")
REFUSAL = re.compile(
    r"\b(i\s*(?:'m|am)\s+(?:sorry|unable)|i\s+(?:can(?:'|no)t|cannot|won't)\s+(?:help|assist|describe|see|view|"
    r"provide|identify|process)|as an ai\b|i do not have the ability|unable to (?:view|see|describe|process) "
    r"(?:the|this|images?))",
    re.IGNORECASE,
)
_LATIN_LANGUAGES = frozenset("en fr de es it pt nl sv da no nb fi pl cs sk sl hr ro hu tr id ms vi ca eu gl".split())
_SCRIPT_OF = {"ru": "CYRILLIC", "uk": "CYRILLIC", "bg": "CYRILLIC", "zh": "CJK", "ja": "CJK", "ko": "HANGUL"}


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def has_loop(tokens: list[str]) -> bool:
    """The same n-gram (n <= 8) three times in a row (one word: four), or long text with few distinct 4-grams."""
    for n in range(1, 9):
        need = 4 if n == 1 else 3
        for i in range(0, len(tokens) - n * need + 1):
            gram = tokens[i : i + n]
            if all(tokens[i + k * n : i + (k + 1) * n] == gram for k in range(1, need)):
                return True
    if len(tokens) >= 40:
        grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
        if len(set(grams)) / len(grams) < 0.5:
            return True
    return False


def repeated_sentences(text: str) -> bool:
    sentences = [s.strip().lower() for s in re.split(r"[.!?\n]+", text) if len(s.split()) >= 3]
    return any(c >= 3 for c in Counter(sentences).values())


def is_loop(text: str) -> bool:
    return has_loop(words(text)) or repeated_sentences(text)


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text[:400]))


def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    if name.startswith("CJK") or name.startswith(("HIRAGANA", "KATAKANA")):
        return "CJK"
    return name.split(" ")[0]


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_of(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) by py3langid."""
    lang, prob = _identifier().classify(text)
    return str(lang), float(prob)


def wrong_language(text: str, expected: str, min_probability: float = 0.9) -> str | None:
    """The language `text` is in when that is clearly not `expected` (e.g. "zh"), else None."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    want = "LATIN" if expected in _LATIN_LANGUAGES else _SCRIPT_OF.get(expected)
    if want:
        scripts = Counter(_script(c) for c in letters)
        other, count = max(((s, n) for s, n in scripts.items() if s != want), key=lambda sn: sn[1], default=("", 0))
        if count / len(letters) > 0.3:
            return language_of(text)[0] if len(letters) >= 2 else other.lower()
    if len(words(text)) < 4:
        return None
    lang, prob = language_of(text)
    return lang if lang != expected and prob >= min_probability else None
