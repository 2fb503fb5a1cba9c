"""Constrained decoding for the transformers engine: one llguidance matcher per batch row, as a LogitsProcessor.

Longer than most modules (~350 lines): the per-row matcher state, the budget steering that closes a sentence or tag
before the token budget, a tag list's no-repeat mask (tag_dedupe.py) and the checks after decoding act on one
matcher; the grammars live in grammars.py.

``logits_processors(tokenizer, constraints)`` returns one ``transformers.LogitsProcessor`` for a whole batch;
row ``i`` follows ``constraints[i]`` (see capmill.engines.grammars) or is left alone when it is None. Masks
for all rows are computed in one parallel llguidance call and applied as a bit mask, on the logits' device.

Budget: given ``max_new_tokens``, a row that has not finished when only ``reserve`` tokens are left is steered
to close its structure (end of sequence if the grammar allows it, else the forced text, else newline, string
and bracket closers), so a constrained output is complete and parses instead of stopping mid-string.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from transformers import LogitsProcessor

from capmill.engines.grammars import CUT_ANYWHERE, TEXT_FORM, grammar_for
from capmill.engines.tag_dedupe import TokenIndex, UniqueTagsRow, ban_in_mask, unique_tags_spec
from capmill.errors import ConfigError

log = logging.getLogger(__name__)

# Tokens kept, beyond the shortest complete output of a grammar, for closing a structure at the budget's end.
RESERVE_MARGIN = 16
# The same for text forms (a sentence end, a tag list): closing takes a token or two, not a nest of brackets.
TEXT_RESERVE_MARGIN = 2
_TEMPLATES_PER_TOKENIZER = 64
# Common chat end markers: besides the tokenizer's own EOS, a grammar may end on whichever one the model emits.
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>")

_lock = threading.Lock()
_ll_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_executor = None


class LLGuidanceLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to the tokens its grammar allows next; see the module docstring.

    State is per generate call: the first call sees the prompt and records its length; every later call
    consumes the one token each row produced since. A row whose grammar has ended (it took an end-of-sequence
    token, or a token it refuses after an accepting state: the pad of a row stopped by a stop string) is
    held to end-of-sequence tokens from then on, so left padding, EOS and stop strings need nothing special
    and nothing can follow a finished structure. Unconstrained rows are never touched. A row with reserve 0 is
    never steered (a text form that may be cut anywhere: it decodes as unconstrained where its grammar allows).
    """

    def __init__(
        self,
        tok: Any,
        matchers: list[Any],
        *,
        max_new_tokens: int | None,
        reserves: list[int],
        unique: list[UniqueTagsRow | None] | None = None,
    ):
        import torch

        self.tok = tok  # the _LLTok bundle
        self.matchers = matchers
        self.rows = [i for i, m in enumerate(matchers) if m is not None]
        self.done = [m is None for m in matchers]
        self.errors: list[str | None] = [None] * len(matchers)
        self.wrapped = [False] * len(matchers)  # True where the budget made the row close early
        self.max_new_tokens = max_new_tokens
        self.reserves = reserves  # per row: tokens left at which the row starts closing its structure
        self.unique = unique or [None] * len(matchers)  # per row: a tag list's no-repeat check (tag_dedupe.py)
        self._start: int | None = None
        words = (tok.ll.vocab_size + 31) // 32
        self._bitmask = torch.full((len(matchers), words), -1, dtype=torch.int32)
        self._luts: dict[Any, Any] = {}

    def __call__(self, input_ids, scores):

        if input_ids.shape[0] != len(self.matchers):
            raise ConfigError(
                f"constrained decoding got a batch of {input_ids.shape[0]} rows for {len(self.matchers)} constraints "
                "(beam search and several return sequences per prompt are not supported with constraints)"
            )
        if not self.rows:
            return scores
        if self._start is None:
            self._start = input_ids.shape[1]
        else:
            self._consume(input_ids[:, -1].tolist())
        live = [i for i in self.rows if not self.done[i]]
        if live:
            _fill_masks([(self.matchers[i], i) for i in live], self._bitmask)
            self._ban_repeats(live)
            left = None if self.max_new_tokens is None else self.max_new_tokens - (input_ids.shape[1] - self._start)
            for i in live:
                if not bool(self._bitmask[i].any()):  # a grammar that allows nothing: end the row cleanly
                    self._finish(i, f"grammar allows no token: {self.matchers[i].get_error() or 'dead end'}")
                elif left is not None and left <= self.reserves[i]:
                    self._wrap_up(i)
        # One in-place pass over the whole batch: unconstrained rows keep all-ones masks, so they get a zero bias.
        scores.add_(self._bias(scores.device, scores.shape[1]))
        return scores

    def _consume(self, last: list[int]) -> None:
        for i in self.rows:
            if self.done[i]:
                continue
            m, token = self.matchers[i], last[i]
            if self.unique[i] is not None:
                self.unique[i].push(token)
            accepting = m.is_accepting()
            if m.consume_token(token):
                if token in self.tok.eos_set:
                    self._finish(i)
            elif accepting:
                self._finish(i)  # the pad of a row a stop string ended, or an EOS the grammar does not know
            else:
                self._finish(i, f"token {token} refused by the grammar: {m.get_error()}")

    def _ban_repeats(self, live: list[int]) -> None:
        """Tag-list rows: clear the tokens that would repeat a tag, before the budget wrap-up reads the mask."""
        rows = [i for i in live if self.unique[i] is not None]
        if rows:
            import numpy as np

            words = self._bitmask.numpy().view(np.uint32)
            for i in rows:
                ban_in_mask(self.unique[i], words[i])

    def _finish(self, i: int, error: str | None = None) -> None:
        self.done[i] = True
        self._bitmask[i] = self.tok.tier_eos
        if error:
            self.errors[i] = error
            log.warning("constrained row %d: %s", i, error)

    def _wrap_up(self, i: int) -> None:
        """Narrow row ``i``'s mask to the shortest way out (see `closing_choice`)."""
        narrowed = closing_choice(self.tok, self.matchers[i], self._bitmask[i])
        if narrowed is not None:
            self._bitmask[i] = narrowed
            self.wrapped[i] = True

    def _bias(self, device, vocab: int):
        """Every row's packed mask as a (batch, vocab) float bias: 0 where allowed, -inf where refused.

        Adding a bias is one branch-free pass over the logits (a boolean masked_fill over a mixed mask is
        several times slower on CPU). The bytes of the packed words index a 256 x 8 table: numpy on CPU, torch
        on the logits' device otherwise (vocab/8 bytes a row cross over). Ids past the tokenizer's vocabulary
        (padding rows of the output layer) are refused in constrained rows and left alone in unconstrained ones.
        """
        import torch

        rows = self._bitmask.shape[0]
        if device not in self._luts:
            table = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()
            lut = torch.zeros((256, 8), dtype=torch.float32).masked_fill_(~table, float("-inf"))
            self._luts[device] = lut.numpy() if device.type == "cpu" else lut.to(device)
        lut = self._luts[device]
        if device.type == "cpu":
            import numpy as np

            bias = torch.from_numpy(np.take(lut, self._bitmask.numpy().view(np.uint8), axis=0).reshape(rows, -1))
        else:
            packed = self._bitmask.to(device, non_blocking=True)
            bias = lut[packed.view(torch.uint8).long()].reshape(rows, -1)
        n = min(vocab, self.tok.ll.vocab_size)
        if bias.shape[1] >= vocab:
            bias = bias[:, :vocab]  # bits past the tokenizer are clear in constrained rows, set in the others
            if bias.shape[1] > n:
                bias[self.rows, n:] = float("-inf")
            return bias
        out = torch.zeros((rows, vocab), dtype=torch.float32, device=device)
        out[:, :n] = bias[:, :n]
        out[self.rows, n:] = float("-inf")
        return out


def logits_processors(
    tokenizer: Any,
    constraints: Sequence[dict[str, Any] | None],
    *,
    max_new_tokens: int | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    reserve: int | None = None,
) -> LLGuidanceLogitsProcessor:
    """One LogitsProcessor for a batch: row i constrained by ``constraints[i]`` (None: unconstrained).

    ``tokenizer`` is a fast Hugging Face tokenizer (or a processor holding one). Pass the generate call's
    ``max_new_tokens`` so outputs close within budget, and the model's EOS ids (generation_config.eos_token_id)
    so a finished grammar may end on any of them. ``reserve`` overrides how many tokens before the budget's
    end a row starts closing (default: its grammar's shortest complete output plus RESERVE_MARGIN).
    Raises ConfigError for a malformed or invalid constraint.
    """
    tok = _ll_tokenizer(getattr(tokenizer, "tokenizer", tokenizer), eos_token_id)
    matchers: list[Any] = []
    reserves: list[int] = []
    unique: list[UniqueTagsRow | None] = []
    for i, constraint in enumerate(constraints):
        spec = unique_tags_spec(constraint.get("grammar")) if isinstance(constraint, dict) else None
        unique.append(None if spec is None else UniqueTagsRow(tok.tag_index(), *spec))
        if constraint is None:
            matchers.append(None)
            reserves.append(0)
            continue
        template, distance = tok.compiled(grammar_for(constraint, tok.added), row=i)
        matchers.append(template.deep_copy())
        marker = _marker(constraint)
        if CUT_ANYWHERE in marker:
            reserves.append(0)  # a budget cut leaves a valid output: never change what the model writes
        elif reserve is not None:
            reserves.append(reserve)
        else:
            reserves.append(distance + (TEXT_RESERVE_MARGIN if TEXT_FORM in marker else RESERVE_MARGIN))
    return LLGuidanceLogitsProcessor(tok, matchers, max_new_tokens=max_new_tokens, reserves=reserves, unique=unique)


def _marker(constraint: dict[str, Any]) -> str:
    """The capmill marker lines at the top of a text-form grammar ("" for any other constraint)."""
    grammar = constraint.get("grammar") if isinstance(constraint, dict) else None
    if not isinstance(grammar, str) or not grammar.startswith(TEXT_FORM):
        return ""
    return "\n".join(line for line in grammar.splitlines()[:2] if line.startswith("// capmill:"))


def closing_choice(tok: _LLTok, matcher: Any, row: Any) -> Any:
    """The packed mask of the tokens that close a structure soonest, given the row's allowed mask, or None.

    In order: end of sequence when the grammar may end; the first forced token; a sentence end (".", "!",
    "?") after which the grammar may end (text forms that end at a sentence boundary); a newline (ends a raw
    tool-call value); a token that closes a JSON string; one that closes arrays or objects. None: keep the
    full mask (the grammar needs content, say the first character of a non-empty name).
    """
    import torch

    eos = row & tok.tier_eos
    if bool(eos.any()):
        return eos
    forced = matcher.compute_ff_tokens()
    if forced:
        only = torch.zeros_like(row)
        only[forced[0] // 32] = _bit(forced[0] % 32)
        return only
    for token in tok.sentence_ids:
        if int(row[token // 32]) & _bit(token % 32):
            trial = matcher.deep_copy()
            if trial.consume_token(token) and trial.is_accepting():
                only = torch.zeros_like(row)
                only[token // 32] = _bit(token % 32)
                return only
    for tier in tok.tiers:
        narrowed = row & tier
        if bool(narrowed.any()):
            return narrowed
    return None


def closing_distance(tok: _LLTok, matcher: Any, limit: int = 4096) -> int:
    """How many tokens the wrap-up policy takes to finish from ``matcher``'s state (on a copy; ``limit`` if never)."""
    import torch

    m = matcher.deep_copy()
    mask = torch.zeros((1, (tok.ll.vocab_size + 31) // 32), dtype=torch.int32)
    for n in range(limit):
        _fill_masks([(m, 0)], mask)
        row = mask[0]
        narrowed = closing_choice(tok, m, row)
        if narrowed is not None:
            row = narrowed
        token = _first_set(row)
        if token is None or token in tok.eos_set:
            return n + 1
        if not m.consume_token(token):
            return limit
    return limit


def _first_set(row: Any) -> int | None:
    """Lowest token id whose bit is set in a packed int32 mask."""
    nonzero = row.nonzero()
    if not len(nonzero):
        return None
    w = int(nonzero[0])
    word = int(row[w]) & 0xFFFFFFFF
    return w * 32 + ((word & -word).bit_length() - 1)


class _LLTok:
    """An llguidance tokenizer with the packed token masks the budget wrap-up uses (built once per tokenizer)."""

    def __init__(self, hf_tokenizer: Any, eos_ids: list[int]):
        import llguidance.hf

        try:
            self.ll = llguidance.hf.from_tokenizer(hf_tokenizer, eos_token=eos_ids)
        except ValueError as exc:
            raise ConfigError(f"constrained decoding needs a fast tokenizer: {exc}") from exc
        self.eos_ids = eos_ids
        self.eos_set = frozenset(eos_ids)
        self.added = frozenset(t.content for t in getattr(hf_tokenizer, "added_tokens_decoder", {}).values())
        texts = [self.ll.decode_bytes([t]) for t in range(self.ll.vocab_size)]
        special = [self.ll.is_special_token(t) for t in range(self.ll.vocab_size)]

        def tier(pred) -> Any:
            return _pack([t for t, b in enumerate(texts) if b and not special[t] and pred(b)], self.ll.vocab_size)

        self._templates: dict[str, tuple[Any, int]] = {}
        self._token_bytes = [None if special[t] else texts[t] for t in range(self.ll.vocab_size)]
        self._tag_index: TokenIndex | None = None
        self.tier_eos = _pack(eos_ids, self.ll.vocab_size)
        # sentence ends, full stops first (the wrap-up takes the first one the grammar allows)
        ends = [(b.strip(), t) for t, b in enumerate(texts) if b and not special[t] and b.strip() in (b".", b"!", b"?")]
        self.sentence_ids = [t for _, t in sorted(ends, key=lambda e: (b".!?".index(e[0]), e[1]))]
        self.tiers = [
            tier(lambda b: set(b) == {0x0A}),  # newline: ends a raw tool-call value
            tier(lambda b: b[:1] == b'"' and set(b[1:]) <= set(b"]}")),  # closes a JSON string (and containers)
            tier(lambda b: set(b) <= set(b"]}")),  # closes arrays and objects
        ]

    def tag_index(self) -> TokenIndex:
        """The token lookups of the tag lists' no-repeat check, built on first use."""
        with _lock:
            if self._tag_index is None:
                self._tag_index = TokenIndex(self._token_bytes, self.eos_ids)
            return self._tag_index

    def compiled(self, grammar: str, row: int = 0) -> tuple[Any, int]:
        """(matcher at the start of ``grammar``, tokens its shortest complete output takes), compiled once."""
        import llguidance

        with _lock:
            hit = self._templates.get(grammar)
        if hit is not None:
            return hit
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll)
        if is_error:
            raise ConfigError(f"constraint of row {row} is not a valid grammar: {messages[0] if messages else ''}")
        matcher = llguidance.LLMatcher(self.ll, grammar, log_level=0)
        if matcher.is_error():
            raise ConfigError(f"constraint of row {row} failed to compile: {matcher.get_error()}")
        entry = (matcher, closing_distance(self, matcher))
        with _lock:
            if len(self._templates) >= _TEMPLATES_PER_TOKENIZER:
                self._templates.pop(next(iter(self._templates)))
            self._templates[grammar] = entry
        return entry


def _ll_tokenizer(hf_tokenizer: Any, eos_token_id: int | Iterable[int] | None) -> _LLTok:
    eos: set[int] = set()
    for value in (hf_tokenizer.eos_token_id, eos_token_id):
        if isinstance(value, int):
            eos.add(value)
        elif value is not None:
            eos.update(int(v) for v in value)
    vocab = hf_tokenizer.get_vocab()
    eos.update(vocab[m] for m in _END_MARKERS if m in vocab)
    eos_ids = sorted(eos)
    with _lock:
        per_tok = _ll_cache.setdefault(hf_tokenizer, {})
        key = tuple(eos_ids)
        if key not in per_tok:
            per_tok[key] = _LLTok(hf_tokenizer, eos_ids)
        return per_tok[key]


def _get_executor():
    global _executor
    with _lock:
        if _executor is None:
            import llguidance

            _executor = llguidance.LLExecutor()
        return _executor


def _fill_masks(pairs: list[tuple[Any, int]], bitmask: Any) -> None:
    """Next-token masks of (matcher, row) pairs into rows of a contiguous CPU int32 tensor, in parallel.

    What llguidance.torch.fill_next_token_bitmask_par does, without importing that module: it decorates a
    kernel with torch.compile at import, which loads the compiler stack (~15 s on a small CPU).
    """
    assert bitmask.dtype.itemsize == 4 and bitmask.is_contiguous() and bitmask.device.type == "cpu"
    batch, words = bitmask.shape
    _get_executor().unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), words * 4, batch)


def _bit(k: int) -> int:
    """Bit ``k`` of an int32 word, as the signed value torch stores."""
    return (1 << k) - (1 << 32) if k == 31 else 1 << k


def _pack(ids: Iterable[int], vocab: int):
    import torch

    words = torch.zeros((vocab + 31) // 32, dtype=torch.int64)
    for t in ids:
        if 0 <= t < vocab:
            words[t // 32] |= 1 << (t % 32)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)
