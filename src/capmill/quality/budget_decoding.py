"""Budgets by constrained decoding: a word-limit grammar that keeps a caption within a text encoder's tokens on
the first try (`--budget clip:77 --budget-method constrain`).

The grammar (an llguidance Lark grammar, the ``{"grammar": ...}`` constraint every constraining engine takes)
holds the output to at most ``max_words`` words, sized from the budget at 1.5 encoder tokens a word (English
captions take about 1.3 in CLIP's BPE, punctuation included), each word at most ``MAX_WORD_CHARS`` characters:

- a caption of up to three quarters of the word limit may end anywhere, exactly as the model ends it, so where
  the budget does not bind the constrained caption is the unconstrained one, token for token;
- a longer one must end at a sentence end (``.``, ``!`` or ``?``, then at most two closing quotes or brackets)
  within the word limit, so a caption the budget binds ends at a sentence boundary, never mid-word.

The language is finite, so decoding always ends within the limit. The grammar is marked as a text form that the
engine's own token budget may cut (no steering near ``max_new_tokens``: an output the token budget stops is
what the model wrote, and the gate's `truncated` check sees it as it would an unconstrained one). Words are not
tokens: the gate counts every caption with the target tokenizer afterwards, and one still over the budget is
rewritten (asked again with a word limit in the prompt, without the grammar). The last retry of a caption still
over the budget is held to a character limit that cannot exceed it (`character_limit_grammar`): a short
caption in printable ASCII that ends at a sentence end, written by the model, never cut.
"""

from __future__ import annotations

from typing import Any

from capmill.engines.grammars import CUT_ANYWHERE, TEXT_FORM
from capmill.quality.policy import Budget

TOKENS_PER_WORD = 1.5  # sizing the word limit: above CLIP BPE's ~1.3 tokens per English word, punctuation included
MAX_WORD_CHARS = 32  # a longer run of non-blank characters is not a word: the grammar never lets one grow past this
FREE_END_SHARE = 0.75  # captions of up to this share of the word limit end wherever the model ends them
_SEPARATOR = r"\s{1,4}"
_SENTENCE_END = "[.!?][\"'\u201d\u2019)\\]]{0,2}"  # then at most two closing quotes or brackets


def budget_words(budget: Budget) -> int:
    """The word limit for a budget: its tokens less the encoder's start and end tokens, at 1.5 tokens a word."""
    return max(1, int((budget.limit - 2) / TOKENS_PER_WORD))


def word_limit_grammar(max_words: int) -> str:
    """The Lark grammar of a caption of at most ``max_words`` words (see the module docstring). Two plain
    regexes, no intersection: llguidance's lexer checks an intersection for emptiness, which runs out of fuel
    at a few hundred words."""
    free = max(1, int(max_words * FREE_END_SHARE))
    word = rf"\S{{1,{MAX_WORD_CHARS}}}"
    head = rf"\s{{0,4}}{word}"
    last = rf"\S{{0,{MAX_WORD_CHARS - 1}}}{_SENTENCE_END}"
    lines = [TEXT_FORM, CUT_ANYWHERE, "start: SHORT", rf"SHORT: /{head}({_SEPARATOR}{word}){{0,{free - 1}}}/"]
    if max_words > free:
        lines[2] = "start: SHORT | LONG"
        lines.append(rf"LONG: /{head}({_SEPARATOR}{word}){{{free - 1},{max_words - 2}}}{_SEPARATOR}{last}/")
    return "\n".join(lines) + "\n"


def character_limit_grammar(max_chars: int) -> str:
    """The Lark grammar of a caption of at most ``max_chars`` printable ASCII characters (spaces included),
    starting with a non-blank and ending at a sentence end: a bound no tokenizer whose tokens each cover at least
    one character (CLIP's byte-level BPE; a SentencePiece model adds at most one word-start piece) can exceed."""
    body = max(0, max_chars - 2)
    lines = [TEXT_FORM, CUT_ANYWHERE, "start: BODY", rf"BODY: /[!-~]([ !-~]{{0,{body}}})?[.!?]/"]
    return "\n".join(lines) + "\n"


def strict_budget_constraint(budget: Budget, special_tokens: int) -> dict[str, Any]:
    """The last retry's constraint for a caption still over its budget: as many characters as the budget has
    tokens, less the encoder's special tokens and one (a SentencePiece word-start piece)."""
    return {"grammar": character_limit_grammar(max(2, budget.limit - special_tokens - 1))}


def budget_constraint(budget: Budget) -> dict[str, Any]:
    """The request constraint holding a caption to the budget's word limit."""
    return {"grammar": word_limit_grammar(budget_words(budget))}


def can_constrain(engine_name: str, output: str) -> bool:
    """Whether a budget grammar can hold this captioner's output: an engine that constrains decoding, free text."""
    from capmill.engines import ENGINES

    return output == "text" and bool(ENGINES.get(engine_name).supports_constrained)


def resolve_method(budget: Budget, engine_name: str, output: str, where: str = "--budget-method") -> str:
    """'constrain' or 'rewrite' for this captioner; ConfigError when constrain is asked of one that cannot."""
    from capmill.errors import ConfigError

    able = can_constrain(engine_name, output)
    if budget.method == "constrain" and not able:
        why = "writes structured output" if output != "text" else f"engine {engine_name!r} cannot constrain decoding"
        raise ConfigError(f"{where} constrain: this captioner {why}; use --budget-method rewrite (or auto)")
    if budget.method == "rewrite":
        return "rewrite"
    return "constrain" if able else "rewrite"
