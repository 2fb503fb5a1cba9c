"""Tiny random-weight models of the real architectures, built offline and saved like a real checkpoint.

``build_tiny_model(arch, path, **sizes)`` writes a folder that loads through exactly the code path a real
checkpoint takes (``AutoProcessor.from_pretrained(path)``, ``AutoModelForImageTextToText.from_pretrained(path)``
or the family class). Weights are scaled so greedy output depends on the image and the prompt, and by default
end-of-sequence and other special tokens can never win the argmax, so generation runs to ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError, UnknownNameError

# arch -> "module:function" building (model, processor) from TinySizes; imported lazily (torch lives there).
BUILDERS = {
    "qwen3_5": "capmill.testing.qwen:build_qwen3_5",
    "qwen2_5_vl": "capmill.testing.qwen:build_qwen2_5_vl",
    "qwen2_vl": "capmill.testing.qwen:build_qwen2_vl",
    "internvl": "capmill.testing.internvl:build_internvl",
    "blip2": "capmill.testing.blip2:build_blip2",
}
ARCHS = tuple(BUILDERS)
ATTENTION_OUTPUTS = ("self_attn.o_proj", "linear_attn.out_proj")
ATTENTION_OUTPUT_GAIN = 3.0


@dataclasses.dataclass(frozen=True)
class TinySizes:
    """Knobs of a tiny model; defaults are the small test size (head_dim 32 so vLLM's kernels accept it)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_layers: int = 1
    vision_heads: int = 1
    # "small": the first 8192 ranks of the real Qwen vocabulary (+ specials); "full": all of it; an int: that many.
    vocab: str | int = "small"
    # Upper bound on vision tokens the language model sees per image (Qwen: merged patches; InternVL: per tile).
    image_tokens: int = 48
    # InternVL tile side and the largest number of tiles; BLIP-2 image side.
    image_size: int = 64
    max_tiles: int = 4
    # BLIP-2's learned queries (the number of image tokens the T5 encoder sees).
    num_query_tokens: int = 8
    logit_scale: float = 4.0
    seed: int = 0
    # False: special tokens (eos, pad, image pads) get zero logits and never win greedy decoding.
    emit_eos: bool = False
    dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def n_ranks(self) -> int | None:
        if self.vocab == "small":
            return 8192
        if self.vocab == "full":
            return None
        if isinstance(self.vocab, int) and self.vocab >= 256:
            return self.vocab
        raise ConfigError(f"vocab={self.vocab!r}: use 'small', 'full' or an int >= 256")

    def key(self) -> str:
        """A short stable string naming these sizes, for cache folders."""
        fields = dataclasses.asdict(self)
        return "-".join(f"{k}={v}" for k, v in sorted(fields.items()) if v != getattr(TinySizes, k))


def make_sizes(**sizes: Any) -> TinySizes:
    """TinySizes from keyword arguments, rejecting unknown names with a ConfigError."""
    names = {f.name for f in dataclasses.fields(TinySizes)}
    unknown = sorted(set(sizes) - names)
    if unknown:
        raise ConfigError(f"unknown tiny-model size(s) {unknown}; known: {sorted(names)}")
    s = TinySizes(**sizes)
    if s.hidden_size % s.num_heads or s.num_heads % s.num_kv_heads:
        raise ConfigError(
            f"hidden_size {s.hidden_size} / heads {s.num_heads} / kv heads {s.num_kv_heads} do not divide"
        )
    return s


def build_tiny_model(arch: str, path: str | Path, **sizes: Any) -> Path:
    """Build a tiny random-weight ``arch`` model with its processor and tokenizer, save it to ``path``, return it."""
    if arch not in BUILDERS:
        raise UnknownNameError("tiny model architecture", arch, list(BUILDERS))
    s = make_sizes(**sizes)
    import torch

    module, func = BUILDERS[arch].split(":")
    builder = getattr(importlib.import_module(module), func)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model, processor = builder(s)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, s.dtype))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = {"arch": arch, "sizes": dataclasses.asdict(s), "note": "random weights, built by capmill.testing"}
    (out / "capmill_tiny.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def scale_weights(model, s: TinySizes, never_emit: list[int]) -> None:
    """Re-draw weights so signals keep their size through the layers and logits are far apart.

    Default HF init (std 0.02) makes a random model's logits nearly flat, so its greedy output hardly depends
    on the input; unit-variance activations and a large output scale make a changed image or word change the
    generated tokens. Rows of ``never_emit`` in the output head are zeroed: a zero logit loses to the maximum
    of thousands of random ones, so eos and pads are never chosen greedily.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(s.seed)
    head = model.get_output_embeddings()
    with torch.no_grad():
        for mod in model.modules():
            if mod is head:
                continue
            if isinstance(mod, nn.Linear):
                mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.in_features), generator=gen)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.02, generator=gen)
            elif isinstance(mod, nn.Embedding):
                mod.weight.normal_(0.0, 1.0, generator=gen)
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
        # Attention averages many positions, so its output is small next to the token's own embedding and a
        # changed word far back barely moves the argmax; a gain on the language model's attention outputs makes
        # the context count (measured on COCO photos: 7-9 of 9 image/prompt pairs give distinct outputs vs 3-5).
        for name, mod in model.named_modules():
            if name.endswith(ATTENTION_OUTPUTS) and not any(v in name for v in ("visual", "vision")):
                mod.weight.mul_(ATTENTION_OUTPUT_GAIN)
        head.weight.normal_(0.0, s.logit_scale / math.sqrt(head.in_features), generator=gen)
        if not s.emit_eos and never_emit:
            head.weight[torch.tensor(sorted(set(never_emit)))] = 0.0
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def unreachable_ids(tokenizer, vocab_size: int) -> list[int]:
    """Ids a tiny model should never emit: special tokens and rows past the tokenizer's end."""
    ids = set(tokenizer.all_special_ids)
    for tid, added in tokenizer.added_tokens_decoder.items():
        if added.special:
            ids.add(tid)
    ids.update(range(len(tokenizer), vocab_size))
    return sorted(i for i in ids if i < vocab_size)


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Embedding rows rounded up as real checkpoints do (Qwen2-VL has 151936 rows for 151657 tokens)."""
    return -(-n // multiple) * multiple
