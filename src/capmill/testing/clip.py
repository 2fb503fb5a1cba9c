"""A tiny random-weight CLIP in the Hugging Face format (config.json, safetensors, processor, tokenizer), built
offline: OpenAI CLIP's real BPE tokenizer (bundled in open_clip_torch) on a 2-layer model. It loads through
`transformers.AutoModel` exactly as openai/clip-vit-base-patch32 does; `text_positions=248` gives the shape of a
LongCLIP checkpoint (its text encoder takes 248 tokens instead of 77).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_tiny_clip(path: str | Path, *, text_positions: int = 77, image_size: int = 32, seed: int = 0) -> Path:
    """Build and save the tiny CLIP into `path` (reused when already built); returns the folder."""
    out = Path(path)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from capmill.eval.lengths import clip_tokenizer

    tokenizer: Any = clip_tokenizer()
    tokenizer = tokenizer.__class__(vocab=tokenizer.get_vocab(), merges=_merges(tokenizer))
    tokenizer.model_max_length = text_positions
    tokenizer.pad_token = "<|endoftext|>"
    vocab = len(tokenizer)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": text_positions,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def _merges(tokenizer: Any) -> list[tuple[str, str]]:
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
