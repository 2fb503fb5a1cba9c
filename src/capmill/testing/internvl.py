"""Tiny HF-native InternVL3.5 (InternViT + Qwen3): InternVLForConditionalGeneration with InternVLProcessor."""

from __future__ import annotations

from capmill.testing import vocab
from capmill.testing.qwen import template
from capmill.testing.tiny_models import TinySizes, padded_vocab, scale_weights, unreachable_ids

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_internvl(s: TinySizes):
    """InternVL3.5-style model: tiles of ``s.image_size`` px (up to ``s.max_tiles`` + a thumbnail), 16 tokens each."""
    import transformers as tf

    tok = vocab.qwen_tokenizer(
        "qwen2",
        vocab.INTERNVL3_5_SPECIALS,
        s.n_ranks(),
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    vocab_size = padded_vocab(len(tok))
    ids = tok.convert_tokens_to_ids
    patch = s.image_size // 8  # 8 x 8 patches per tile; pixel shuffle (0.5) leaves 16 tokens per tile
    image_seq_length = (s.image_size // patch) ** 2 // 4
    text = {
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "max_position_embeddings": 40960,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision = {
        "hidden_size": s.vision_hidden_size,
        "num_hidden_layers": s.vision_layers,
        "num_attention_heads": s.vision_heads,
        "intermediate_size": 4 * s.vision_hidden_size,
        "image_size": [s.image_size, s.image_size],
        "patch_size": [patch, patch],
    }
    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = tf.InternVLForConditionalGeneration(config)
    side = {"height": s.image_size, "width": s.image_size}
    norm = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    image_processor = tf.GotOcr2ImageProcessor(
        size=side, crop_to_patches=True, min_patches=1, max_patches=s.max_tiles, **norm
    )
    video_processor = tf.InternVLVideoProcessor(size=side, **norm)
    processor = tf.InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        image_seq_length=image_seq_length,
        chat_template=template("internvl3_5.jinja"),
    )
    scale_weights(model, s, unreachable_ids(tok, vocab_size))
    end, eot = ids("<|im_end|>"), ids("<|endoftext|>")
    model.generation_config = tf.GenerationConfig(bos_token_id=eot, eos_token_id=[end, eot], pad_token_id=eot)
    return model.eval(), processor
