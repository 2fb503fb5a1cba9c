"""Caption lengths in the tokens of the text encoders that consume captions: CLIP (77) and T5 (512).

CLIP counts are exact: OpenAI CLIP's BPE vocabulary ships inside the open_clip_torch package and is loaded into
transformers' CLIPTokenizer (checked token-for-token against open_clip's reference tokenizer in the tests).
T5's SentencePiece model ships in no installable package, so unless a real T5 tokenizer is given (hub id or
local path, e.g. --length-tokenizer t5=google/flan-t5-xl), T5 counts are approximated with a WordPiece
tokenizer of similar vocabulary size (bert-base-uncased, 30,522 pieces, bundled with all-MiniLM-L6-v2) plus
T5's end-of-sequence token, and labelled "approx".
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from capmill.errors import ConfigError, MissingDependencyError


@dataclass
class LengthEncoder:
    """Counts tokens of one encoder, including the special tokens it adds, against its context limit."""

    name: str
    limit: int
    count: Callable[[str], int]
    source: str
    exact: bool

    def describe(self) -> dict[str, object]:
        return {"limit": self.limit, "tokenizer": self.source, "exact": self.exact}


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable character map (GPT-2's).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@lru_cache(maxsize=1)
def clip_tokenizer():  # noqa: ANN201 - a transformers tokenizer
    """OpenAI CLIP's tokenizer built from the BPE file bundled in open_clip_torch (no download, no torch import)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("open_clip_torch", "eval", "CLIP token counts")
    bpe = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])


def clip_clean(text: str) -> str:
    """CLIP's own text clean-up before BPE (ftfy repair, which also straightens quotes, and HTML unescape)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy comes with open_clip_torch; without it only exotic text counts differ
        pass
    return html.unescape(html.unescape(text)).strip()


def _clip_encoder() -> LengthEncoder:
    tok = clip_tokenizer()
    return LengthEncoder(
        "clip", 77, lambda t: len(tok(clip_clean(t))["input_ids"]), "openai/clip BPE (open_clip_torch)", True
    )


def _t5_approx() -> LengthEncoder:
    from tokenizers import Tokenizer

    from capmill.eval.embeddings import bundled_minilm_path

    tok = Tokenizer.from_file(str(bundled_minilm_path() / "tokenizer.json"))
    tok.no_padding()  # the file pads and truncates to 128 for the embedder; counting needs neither
    tok.no_truncation()
    # WordPiece pieces without [CLS]/[SEP], plus T5's single </s>.
    return LengthEncoder(
        "t5",
        512,
        lambda t: len(tok.encode(t, add_special_tokens=False).ids) + 1,
        "approx: bert-base-uncased WordPiece + 1 (no T5 SentencePiece model offline)",
        False,
    )


def _hf_encoder(name: str, spec: str, limit: int) -> LengthEncoder:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec)
    except Exception as exc:
        raise ConfigError(f"length tokenizer {name}={spec!r} could not be loaded: {exc}") from exc
    return LengthEncoder(name, limit, lambda t: len(tok(t)["input_ids"]), spec, True)


DEFAULT_LIMITS = {"clip": 77, "t5": 512}


def length_encoders(overrides: dict[str, str] | None = None) -> list[LengthEncoder]:
    """CLIP and T5 by default; `overrides` maps a name to "hub-id-or-path[:limit]" for an exact tokenizer."""
    overrides = dict(overrides or {})
    out = []
    for name in ("clip", "t5"):
        if name in overrides:
            continue
        out.append(_clip_encoder() if name == "clip" else _t5_approx())
    for name, spec in overrides.items():
        path, _, limit = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() else (spec, "", "")
        out.append(_hf_encoder(name, path, int(limit) if limit else DEFAULT_LIMITS.get(name, 512)))
    return out


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """["t5=google/flan-t5-xl", "clip=/models/clip:77"] -> {"t5": ..., "clip": ...}."""
    out = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--length-tokenizer {item!r}: expected NAME=HUB_ID_OR_PATH[:LIMIT]")
        out[name] = spec
    return out


def budget_encoder(spec: str) -> LengthEncoder:
    """`--budget` specs: "clip:77" (OpenAI CLIP's BPE, exact), "t5:512" (approximate offline), or
    "HUB_ID_OR_PATH:LIMIT" for any tokenizer; ConfigError for anything else."""
    name, sep, limit = spec.rpartition(":")
    if not sep or not name or not limit.isdigit() or int(limit) < 3:
        raise ConfigError(f"--budget {spec!r}: expected ENCODER:TOKENS, e.g. clip:77, t5:512 or a tokenizer path:N")
    if name == "clip":
        base = _clip_encoder()
    elif name == "t5":
        base = _t5_approx()
    else:
        base = _hf_encoder(name, name, int(limit))
    return LengthEncoder(name, int(limit), base.count, base.source, base.exact)
