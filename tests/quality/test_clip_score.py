"""CLIPScore through capmill's scorer equals the CLIP model's own forward, in any batch, for short and long text."""

from __future__ import annotations

import pytest
import torch

from capmill.quality.clip_score import ClipScorer

CAPTIONS = [
    "a dog",
    "two people riding bicycles down a city street past parked cars",
    "a plate of food on a wooden table",
    "",
]


def _reference_cosines(model_dir, images, texts):
    """The model card way: CLIPModel(**processor(text, images)).logits_per_image / logit_scale."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    out = []
    for image, text in zip(images, texts, strict=True):
        inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out.append(float(model(**inputs).logits_per_image[0, 0] / model.logit_scale.exp()))
    return out


def test_scores_equal_the_models_own_forward(tiny_clip, photos):
    images = photos[: len(CAPTIONS)]
    scorer = ClipScorer(str(tiny_clip), batch_size=3)
    scores = scorer.score(images, CAPTIONS)
    reference = _reference_cosines(tiny_clip, images, CAPTIONS)
    assert [s.cosine for s in scores] == pytest.approx(reference, abs=1e-5)
    assert [s.clip_score for s in scores] == pytest.approx([2.5 * max(c, 0.0) for c in reference], abs=1e-5)
    assert all(s.max_tokens == 77 and not s.truncated for s in scores)
    assert scores[0].tokens == 4  # <|startoftext|> a dog <|endoftext|>
    assert scorer.describe() == {"model": str(tiny_clip), "max_tokens": 77, "long_text": False}


def test_batch_size_does_not_change_a_score(tiny_clip, photos):
    texts = [f"photo number {i} of a scene" for i in range(len(photos))]
    one = ClipScorer(str(tiny_clip), batch_size=1).score(photos, texts)
    many = ClipScorer(str(tiny_clip), batch_size=5).score(photos, texts)
    assert [s.cosine for s in one] == pytest.approx([s.cosine for s in many], abs=1e-5)
    assert len({round(s.cosine, 6) for s in one}) > 1  # different photos, different scores


def test_long_captions_are_truncated_by_clip_and_scored_whole_by_a_longclip(tiny_clip, tiny_longclip, photos):
    long_caption = "a cat sitting on a red mat beside a window " * 12  # 110+ tokens
    clip = ClipScorer(str(tiny_clip)).score(photos[:1], [long_caption])[0]
    assert clip.truncated and clip.tokens > 100 and clip.max_tokens == 77
    # CLIP reads exactly its first 77 tokens: the same score as the caption cut there by its tokenizer
    tok = ClipScorer(str(tiny_clip)).processor.tokenizer
    ids = tok(long_caption)["input_ids"][:76]
    cut = tok.decode(ids[1:], skip_special_tokens=True)
    cut_score = ClipScorer(str(tiny_clip)).score(photos[:1], [cut])[0]
    assert cut_score.cosine == pytest.approx(clip.cosine, abs=1e-5)
    longclip = ClipScorer(str(tiny_longclip))
    assert longclip.long_text and longclip.describe()["max_tokens"] == 248
    whole = longclip.score(photos[:1], [long_caption])[0]
    assert not whole.truncated and whole.tokens == clip.tokens
    head = longclip.score(photos[:1], [cut])[0]
    assert whole.cosine != pytest.approx(head.cosine, abs=1e-6)  # the words after token 77 count


def test_a_missing_model_is_a_model_load_error(tmp_path):
    from capmill.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="could not be loaded"):
        ClipScorer(str(tmp_path / "nothing"))


def test_the_gate_scores_on_the_captioners_device_unless_told(tiny_clip):
    from capmill.quality.gate import Gate
    from capmill.quality.policy import GatePolicy, Scorer

    same = Gate(GatePolicy(scorer=Scorer(model=str(tiny_clip))), device="cpu")
    assert same.scorer.device == "cpu" and str(next(same.scorer.model.parameters()).device) == "cpu"
    auto = Gate(GatePolicy(scorer=Scorer(model=str(tiny_clip))), device=None)  # no GPU here: the CPU
    assert auto.scorer.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Gate(GatePolicy(scorer=Scorer(model=str(tiny_clip), device="cpu")), device="cuda:3").scorer.device == "cpu"
