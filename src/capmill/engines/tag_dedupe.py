"""No tag twice in a tag list, enforced while decoding: the tokens that would repeat a tag are banned per row.

A text-form tag grammar (capmill.engines.grammars.text_form_grammar with ``tags``) holds the output to
``PREFIX tag, tag, ...`` from a vocabulary; its last line names the vocabulary (``UNIQUE_TAGS``). Refusing
repeats inside the grammar takes one negated pattern per tag, which llguidance's lexer cannot hold past a
handful of tags; here the check runs beside the grammar instead, on the bytes the row has written so far.

A token is banned when, appended to the row's text, no list without a repeat can follow: it completes a tag
already listed (``dog`` then ``, `` or the end), or leaves a partial tag that only listed tags start with, or
starts a new tag when every tag is listed. Tokens that span a separator (``g, c``) and tags that are prefixes
of other tags (``dog`` / ``dog collar``: ``dog`` may be written again on the way to ``dog collar``) follow
from that rule. Only the few tokens that could break it are looked at each step: the prefixes of the listed
tags' remaining text and the allowed tokens holding a comma. A row the rule leaves without a token may end.

Pure Python and numpy; the engines own the masks (constrained.py: the llguidance bit mask before the budget
wrap-up; vllm_tag_dedupe.py: vLLM's logits after its grammar mask).
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from capmill.engines.grammars import UNIQUE_TAGS

_SEP = b","


def unique_tags_spec(grammar: Any) -> tuple[str, Vocabulary] | None:
    """(prefix, vocabulary) named on a tag grammar's last line, or None for any other grammar."""
    if not isinstance(grammar, str):
        return None
    last = grammar.rstrip("\n").rpartition("\n")[2]
    return _spec(last) if last.startswith(UNIQUE_TAGS) else None


@functools.lru_cache(maxsize=16)
def _spec(line: str) -> tuple[str, Vocabulary]:
    """One vocabulary line parsed and sorted once (a batch's rows and later batches share a recipe's grammar)."""
    spec = json.loads(line[len(UNIQUE_TAGS) :])
    return str(spec["prefix"]), Vocabulary(str(t) for t in spec["tags"])


class TokenIndex:
    """A tokenizer's token bytes, looked up the ways the ban needs (built once per tokenizer)."""

    def __init__(self, token_bytes: Sequence[bytes | None], eos_ids: Iterable[int]):
        import numpy as np

        self.bytes = list(token_bytes)  # None: a special token (never part of a tag list's text)
        self.eos_ids = sorted(set(eos_ids))
        self.by_bytes: dict[bytes, list[int]] = {}
        commas: list[int] = []
        for t, b in enumerate(self.bytes):
            if not b:
                continue
            self.by_bytes.setdefault(b, []).append(t)
            if _SEP in b:
                commas.append(t)
        self.comma_ids = np.asarray(commas, dtype=np.int64)
        self.longest = max((len(b) for b in self.by_bytes), default=0)


class Vocabulary:
    """The tags of one grammar as sorted UTF-8 bytes, for "how many tags start with X" by bisection."""

    def __init__(self, tags: Iterable[str]):
        self.sorted = sorted({t.encode("utf-8") for t in tags})
        self.set = frozenset(self.sorted)

    def unused_start_with(self, partial: bytes, used: set[bytes]) -> bool:
        """Whether some tag not in ``used`` starts with ``partial``."""
        lo = bisect.bisect_left(self.sorted, partial)
        hi = bisect.bisect_left(self.sorted, partial + b"\xff", lo)  # 0xff never occurs in UTF-8
        return hi - lo > sum(1 for u in used if u.startswith(partial) and u in self.set)


class UniqueTagsRow:
    """One row's text so far and the tokens it may not take next."""

    def __init__(self, index: TokenIndex, prefix: str, vocabulary: Vocabulary, eos_ids: Iterable[int] | None = None):
        self.index, self.vocab = index, vocabulary
        self.eos_ids = index.eos_ids if eos_ids is None else sorted(set(eos_ids))
        self.prefix = prefix.encode("utf-8")
        self.text = b""
        self._state: tuple[set[bytes], bytes, bytes] | str | None = None

    def push(self, token: int) -> None:
        """The row took ``token``."""
        if 0 <= token < len(self.index.bytes) and self.index.bytes[token]:
            self.text += self.index.bytes[token]
            self._state = None

    def state(self) -> tuple[set[bytes], bytes, bytes] | str:
        """The row's text parsed (see `_parse`), once per token."""
        if self._state is None:
            self._state = _parse(self.prefix, self.text)
        return self._state

    def banned(self, allowed_comma_ids: Iterable[int]) -> list[int]:
        """Tokens after which a repeat is unavoidable, and the EOS ids when the list would end on a repeat.

        ``allowed_comma_ids``: the tokens holding a comma that the grammar allows now. The other candidates
        (prefixes of what the listed tags still need) are checked unfiltered: banning a token the grammar
        refuses anyway changes nothing.
        """
        index = self.index
        out = [t for t in allowed_comma_ids if not self.viable(index.bytes[t] or b"")]
        state = self.state()
        if not isinstance(state, tuple):
            return out
        used, tail, lead = state
        seen: set[bytes] = set()  # listed tags share beginnings ("tag 1", "tag 12"): each piece is judged once
        for u in used:
            target = lead + u
            if not target.startswith(tail):
                continue
            rest = target[len(tail) :]
            for j in range(1, min(len(rest), index.longest) + 1):
                piece = rest[:j]
                if piece in seen:
                    continue
                seen.add(piece)
                ids = index.by_bytes.get(piece)
                if ids and not self.viable(piece):
                    out.extend(ids)
        if tail.startswith(lead) and tail[len(lead) :] in used:
            out.extend(self.eos_ids)
        return out

    def viable(self, more: bytes) -> bool:
        """Whether the row's text plus ``more`` can still become a list without a repeated tag."""
        state = self.state()
        if state is _OTHER:  # still inside the prefix: parse the longer text whole
            state, more = _parse(self.prefix, self.text + more), b""
        if not isinstance(state, tuple):
            return state is not _REPEAT
        used, tail, lead = state
        segments = (tail + more).split(_SEP)
        listed = used
        for k, seg in enumerate(segments[:-1]):  # the tags ``more`` completes
            before = lead if k == 0 else b" "
            if not seg.startswith(before):
                return True  # not the list's layout: the grammar refuses it, not this check
            name = seg[len(before) :]
            if name in listed:
                return False
            listed = listed | {name}
        last, before = segments[-1], (lead if len(segments) == 1 else b" ")
        if not last.startswith(before):  # "," written, its blank not yet: a new tag must still be possible
            return not before.startswith(last) or self.vocab.unused_start_with(b"", listed)
        return self.vocab.unused_start_with(last[len(before) :], listed)


_REPEAT = "repeat"
_OTHER = "other"


def _parse(prefix: bytes, text: bytes) -> tuple[set[bytes], bytes, bytes] | str:
    """(tags listed so far, the text after the last comma, its lead: b"" first, b" " after a comma).

    ``_REPEAT`` for a text that lists a tag twice; ``_OTHER`` while the text is still inside the prefix and for
    text that is not the list's layout (the grammar refuses that; not this check's business).
    """
    if len(text) <= len(prefix) or not text.startswith(prefix):
        return _OTHER
    segments = text[len(prefix) :].split(_SEP)
    used: set[bytes] = set()
    for k, seg in enumerate(segments[:-1]):
        if k:
            if seg[:1] != b" ":
                return _OTHER
            seg = seg[1:]
        if seg in used:
            return _REPEAT
        used.add(seg)
    return used, segments[-1], (b" " if len(segments) > 1 else b"")


def ban_in_mask(row: UniqueTagsRow, words: Any) -> int:
    """Clear the bits of ``row``'s banned tokens in its packed mask (a numpy uint32 view, changed in place).

    Returns how many tokens were banned. Should nothing be left, the grammar's end of sequence is allowed again
    (else its whole mask): the list ends, and the check after decoding removes the repeat.
    """
    import numpy as np

    ids = row.index.comma_ids
    ids = ids[ids < len(words) * 32]
    allowed = ids[((words[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1).astype(bool)]
    banned = row.banned(allowed.tolist())
    if not banned:
        return 0
    before = words.copy()
    b = np.asarray(sorted(set(banned)), dtype=np.int64)
    b = b[b < len(words) * 32]
    np.bitwise_and.at(words, b >> 5, ~np.left_shift(np.uint32(1), (b & 31).astype(np.uint32)))
    if not words.any():
        eos = np.asarray(row.eos_ids, dtype=np.int64)
        words[eos >> 5] |= before[eos >> 5] & np.left_shift(np.uint32(1), (eos & 31).astype(np.uint32))
        if not words.any():
            words[:] = before
    return len(b)
