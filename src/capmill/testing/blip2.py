"""Tiny BLIP-2 with a flan-t5 style decoder: Blip2ForConditionalGeneration with Blip2Processor (no chat template)."""

from __future__ import annotations

import math

from capmill.testing import vocab
from capmill.testing.qwen import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from capmill.testing.tiny_models import TinySizes, padded_vocab, scale_weights, unreachable_ids

RELATIVE_BIAS_GAIN = 4.0
CROSS_ATTENTION_GAIN = 2.0


def t5_pieces(n_ranks: int) -> list[tuple[str, float]]:
    """A sentencepiece-style unigram vocabulary derived offline from the first Qwen BPE ranks.

    flan-t5's own vocabulary is a sentencepiece file from the hub; the frequent English pieces of Qwen's ranks
    ("▁the", "▁man", "ing") give a tokenizer that splits captions into realistic word pieces. Layout as T5:
    <pad>=0, </s>=1, <unk>=2, pieces, then the 100 sentinels <extra_id_99>..<extra_id_0>.
    """
    pieces: dict[str, float] = {}
    for rank, raw in enumerate(vocab._load_ranks("qwen2", n_ranks)):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        body = text[1:] if text.startswith(" ") else text
        if not body or not body.isprintable() or " " in body or any(c.isspace() for c in body):
            continue
        piece = ("▁" + body) if text.startswith(" ") else body
        # Longer, more frequent pieces score higher; single characters stay as a fallback.
        score = -10.0 if len(piece) == 1 else -5.0 - math.log1p(rank) / 4
        pieces.setdefault(piece, score)
    pieces.setdefault("▁", -3.0)
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return specials + sorted(pieces.items(), key=lambda kv: -kv[1]) + sentinels


def build_blip2(s: TinySizes):
    """BLIP-2 (ViT + Q-Former + T5 encoder-decoder) at ``s.image_size`` px with ``s.num_query_tokens`` queries."""
    import torch
    import transformers as tf

    tok = tf.T5Tokenizer(vocab=t5_pieces(s.n_ranks() or 8192), extra_ids=100, model_max_length=512)
    image_processor = tf.BlipImageProcessor(
        size={"height": s.image_size, "width": s.image_size}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    # Blip2Processor adds "<image>" after the sentinels (id 32100 in the real flan-t5 checkpoints).
    processor = tf.Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=s.num_query_tokens)
    vocab_size = padded_vocab(len(tok), 128)
    patch = s.image_size // 8
    text = {
        "model_type": "t5",
        "vocab_size": vocab_size,
        "d_model": s.hidden_size,
        "d_kv": s.head_dim,
        "d_ff": s.intermediate_size,
        "num_layers": s.num_layers,
        "num_decoder_layers": s.num_layers,
        "num_heads": s.num_heads,
        "feed_forward_proj": "gated-gelu",
        # flan-t5 (T5 v1.1) does not rescale decoder outputs by d_model**-0.5. transformers 5's T5Config reads that
        # from the old `tie_word_embeddings=False` and then ties lm_head to `shared` anyway, so say both explicitly:
        # lm_head and the encoder/decoder embeddings share `shared.weight`, and only it is saved.
        "tie_word_embeddings": True,
        "scale_decoder_outputs": False,
        "decoder_start_token_id": tok.pad_token_id,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    vision = {
        "hidden_size": s.vision_hidden_size,
        "intermediate_size": 4 * s.vision_hidden_size,
        "num_hidden_layers": s.vision_layers,
        "num_attention_heads": s.vision_heads,
        "image_size": s.image_size,
        "patch_size": patch,
    }
    qformer = {
        "vocab_size": 512,
        "hidden_size": s.vision_hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": s.vision_heads,
        "intermediate_size": 2 * s.vision_hidden_size,
        "encoder_hidden_size": s.vision_hidden_size,
        "cross_attention_frequency": 1,
    }
    config = tf.Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=s.num_query_tokens,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = tf.Blip2ForConditionalGeneration(config)
    scale_weights(model, s, unreachable_ids(tok, vocab_size))
    with torch.no_grad():
        # Default init leaves the learned queries and patch positions near zero, which would make every image
        # look alike after the Q-Former; unit-scale them so the image reaches the decoder.
        gen = torch.Generator().manual_seed(s.seed + 1)
        model.query_tokens.normal_(0.0, 1.0, generator=gen)
        model.vision_model.embeddings.position_embedding.normal_(0.0, 1.0, generator=gen)
        model.vision_model.embeddings.class_embedding.normal_(0.0, 1.0, generator=gen)
        # A random T5 decoder tends to follow its previous token and loop; larger relative-position biases and a
        # stronger cross-attention output let position, image and prompt steer each step (tuned on COCO photos).
        for name, mod in model.language_model.named_modules():
            if name.endswith("relative_attention_bias"):
                mod.weight.mul_(RELATIVE_BIAS_GAIN)
            if "EncDecAttention.o" in name and isinstance(mod, torch.nn.Linear):
                mod.weight.mul_(CROSS_ATTENTION_GAIN)
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return model.eval(), processor
