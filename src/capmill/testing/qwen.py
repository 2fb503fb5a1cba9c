"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3.5 models with the real tokenizer layout and chat templates."""

from __future__ import annotations

from importlib import resources

from capmill.testing import vocab
from capmill.testing.tiny_models import TinySizes, padded_vocab, scale_weights, unreachable_ids

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def template(name: str) -> str:
    """A chat template shipped with capmill.testing (provenance in templates/PROVENANCE.txt)."""
    return resources.files("capmill.testing").joinpath("templates", name).read_text(encoding="utf-8")


def mrope_section(half: int, weights: tuple[int, int, int]) -> list[int]:
    """Split ``half`` rotary pairs over (time, height, width) in the real model's proportions; sums to ``half``."""
    total = sum(weights)
    t = max(1, round(half * weights[0] / total))
    h = max(1, round(half * weights[1] / total))
    return [t, h, half - t - h]


def _pixel_bounds(s: TinySizes, unit: int) -> dict[str, int]:
    """min/max pixels so a photo becomes at most ``s.image_tokens`` merged patches of ``unit`` x ``unit`` pixels."""
    return {"shortest_edge": 4 * unit * unit, "longest_edge": s.image_tokens * unit * unit}


def _text_config(s: TinySizes, vocab_size: int, tok) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "max_position_embeddings": 32768,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }


def _vision_ids(tok) -> dict[str, int]:
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _generation_config(model, tok) -> None:
    """Greedy by default; stop on <|im_end|> or <|endoftext|>, as the Qwen instruct checkpoints do."""
    from transformers import GenerationConfig

    end = tok.convert_tokens_to_ids("<|im_end|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[end, eot], pad_token_id=eot)


def _finish(model, tok, s: TinySizes, vocab_size: int):
    scale_weights(model, s, unreachable_ids(tok, vocab_size))
    _generation_config(model, tok)
    return model.eval()


def _qwen2_family(s: TinySizes, *, v25: bool):
    import transformers as tf

    specials = vocab.QWEN2_5_VL_SPECIALS if v25 else vocab.QWEN2_VL_SPECIALS
    tok = vocab.qwen_tokenizer("qwen2", specials, s.n_ranks())
    vocab_size = padded_vocab(len(tok))
    text = _text_config(s, vocab_size, tok)
    half = s.head_dim // 2
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": mrope_section(half, (1, 1.5, 1.5)),
    }
    patch, merge = 14, 2
    if v25:
        vision = {
            **_vision_tower(s, patch, merge),
            "window_size": 112,
            "fullatt_block_indexes": [s.vision_layers - 1],
        }
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_vision_ids(tok))
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    else:
        vision = {
            "depth": s.vision_layers,
            "embed_dim": s.vision_hidden_size,
            "hidden_size": s.hidden_size,
            "num_heads": s.vision_heads,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": merge,
        }
        config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **_vision_ids(tok))
        model = tf.Qwen2VLForConditionalGeneration(config)
    size = _pixel_bounds(s, patch * merge)
    proc_kw = {"patch_size": patch, "merge_size": merge, "temporal_patch_size": 2, "size": size}
    proc_kw.update(image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    image_processor = tf.Qwen2VLImageProcessor(**proc_kw)
    video_processor = tf.Qwen2VLVideoProcessor(**proc_kw)
    cls = tf.Qwen2_5_VLProcessor if v25 else tf.Qwen2VLProcessor
    processor = cls(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=template("qwen2_vl.jinja"),
    )
    return _finish(model, tok, s, vocab_size), processor


def build_qwen2_vl(s: TinySizes):
    """Qwen2-VL (Inkscope-Captions-2B's family): Qwen2VLForConditionalGeneration + Qwen2VLProcessor."""
    return _qwen2_family(s, v25=False)


def build_qwen2_5_vl(s: TinySizes):
    """Qwen2.5-VL (CapRL-3B's family): windowed vision attention, Qwen2.5 added tokens."""
    return _qwen2_family(s, v25=True)


def build_qwen3_5(s: TinySizes):
    """Qwen3.5 (the JSON captioner's family): hybrid linear/full attention, Qwen3VLProcessor, small chat template."""
    import transformers as tf

    tok = vocab.qwen_tokenizer("qwen3_5", vocab.QWEN3_5_SPECIALS, s.n_ranks(), tokenizer_cls="Qwen3_5Tokenizer")
    vocab_size = padded_vocab(len(tok))
    text = _text_config(s, vocab_size, tok)
    # Partial rotary (a quarter of head_dim) with interleaved mrope: the sections must sum to half the rotary dim.
    rotary_half = max(3, s.head_dim // 4 // 2)
    text.update(
        head_dim=s.head_dim,
        layer_types=(["linear_attention"] * (s.num_layers - 1) + ["full_attention"])
        if s.num_layers > 1
        else ["full_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=s.head_dim,
        linear_value_head_dim=s.head_dim,
        linear_num_key_heads=s.num_kv_heads,
        linear_num_value_heads=s.num_heads,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 2 * rotary_half / s.head_dim,
            "mrope_section": mrope_section(rotary_half, (11, 11, 10)),
            "mrope_interleaved": True,
        },
    )
    patch, merge = 16, 2
    side = 8  # learned vision position embeddings on an 8 x 8 grid (a perfect square), interpolated to each image
    vision = {
        **_vision_tower(s, patch, merge),
        "temporal_patch_size": 2,
        "num_position_embeddings": side * side,
    }
    config = tf.Qwen3_5Config(text_config=text, vision_config=vision, **_vision_ids(tok))
    model = tf.Qwen3_5ForConditionalGeneration(config)
    proc_kw = {
        "patch_size": patch,
        "merge_size": merge,
        "temporal_patch_size": 2,
        "size": _pixel_bounds(s, patch * merge),
    }
    proc_kw.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = tf.Qwen3VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**proc_kw),
        tokenizer=tok,
        video_processor=tf.Qwen3VLVideoProcessor(**proc_kw),
        chat_template=template("qwen3_5_small.jinja"),
    )
    return _finish(model, tok, s, vocab_size), processor


def _vision_tower(s: TinySizes, patch: int, merge: int) -> dict[str, int]:
    """The vision-config keys every Qwen-VL generation shares, at the tiny sizes."""
    return {
        "depth": s.vision_layers,
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": 2 * s.vision_hidden_size,
        "num_heads": s.vision_heads,
        "out_hidden_size": s.hidden_size,
        "patch_size": patch,
        "spatial_merge_size": merge,
    }
