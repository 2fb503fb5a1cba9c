"""--budget clip:N: captions over a text encoder's budget are asked for again with a word limit, never cut."""

from __future__ import annotations

import json

import pytest

from capmill.quality.gated import GatedCaptioner
from capmill.quality.policy import Budget, budget_only_policy


def _clip_tokens(text: str) -> int:
    """OpenAI CLIP's own tokenizer (open_clip's SimpleTokenizer), with its start and end tokens."""
    from open_clip.tokenizer import SimpleTokenizer

    return len(SimpleTokenizer().encode(text)) + 2


def test_budget_counts_retries_with_a_word_limit_and_never_cuts(tiny_model, coco_photos):
    qwen = tiny_model("qwen2_vl")
    budget = Budget(encoder="clip", limit=16, method="rewrite")
    kwargs = {"model": str(qwen), "profile": "inkscope-2b", "decoding": {"max_new_tokens": 12}, "batch_size": 4}
    with GatedCaptioner(gate=budget_only_policy(budget), **kwargs) as captioner:
        records = captioner.caption([str(p) for p in coco_photos[:4]])
    over = 0
    for record in records:
        quality = record.quality
        attempts = quality["attempts"]
        for entry in attempts:
            assert entry["budget_tokens"] == _clip_tokens(entry["text"])
            assert ("over_budget" in entry["reasons"]) == (entry["budget_tokens"] > 16)
        kept = attempts[quality["attempt"]]
        assert record.raw == kept["text"]  # the model's own text, whole
        method = "rewrite" if quality["attempt"] else "none"
        assert quality["budget"] == {"encoder": "clip", "limit": 16, "tokens": kept["budget_tokens"], "method": method}
        if attempts[0]["reasons"]:
            over += 1
            assert attempts[1]["change"] == "same request + word limit"
            assert attempts[1]["decoding"] == {"max_new_tokens": 12}
    assert over >= 1  # random text is long in CLIP tokens: the retry path ran


def test_cli_budget_and_its_errors(tiny_model, coco_photos, tmp_path, capsys):
    from capmill.cli.main import main

    qwen = tiny_model("qwen2_vl")
    args = ["caption", str(coco_photos[0]), "--model", str(qwen), "--profile", "inkscope-2b", "--max-new-tokens", "8"]
    out = tmp_path / "r.jsonl"
    assert main([*args, "--budget", "clip:200", "--out", str(out), "-q"]) == 0
    (row,) = [json.loads(line) for line in out.open()]
    assert row["quality"]["passed"] and row["quality"]["budget"]["tokens"] == _clip_tokens(row["raw"])
    summary = json.loads((tmp_path / "r.jsonl.capmill" / "summary.json").read_text())
    assert summary["gate"]["gated"] == 1 and summary["gate"]["retried"] == 0
    capsys.readouterr()
    for bad, said in (("clip", "--budget 'clip'"), ("clip:x", "expected ENCODER:TOKENS"), ("/no/such:40", "/no/such")):
        assert main([*args, "--budget", bad, "--out", str(tmp_path / "x.jsonl")]) == 2
        assert said in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["clip", "clip:x", "clip:2"])
def test_budget_spec_errors_name_the_flag(spec):
    from capmill.errors import ConfigError
    from capmill.eval.lengths import budget_encoder

    with pytest.raises(ConfigError, match="--budget"):
        budget_encoder(spec)
