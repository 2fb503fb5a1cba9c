"""--budget-method constrain: a word-limit grammar on the first try (transformers + llguidance, a tiny Qwen2-VL,
real photos), every caption counted by OpenAI CLIP's own tokenizer (open_clip), never cut."""

from __future__ import annotations

import json
import re

import pytest

from capmill.errors import ConfigError
from capmill.quality.budget_decoding import (
    FREE_END_SHARE,
    MAX_WORD_CHARS,
    budget_words,
    resolve_method,
)
from capmill.quality.gated import GatedCaptioner
from capmill.quality.policy import Budget, budget_only_policy

SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]{0,2}$")


def _clip_tokens(text: str) -> int:
    from open_clip.tokenizer import SimpleTokenizer

    return len(SimpleTokenizer().encode(text)) + 2


def _kwargs(qwen, max_new: int) -> dict:
    return {"model": str(qwen), "profile": "inkscope-2b", "decoding": {"max_new_tokens": max_new}, "batch_size": 6}


def _in_word_grammar(text: str, max_words: int) -> bool:
    """Whether `text` is in the word-limit grammar's language (the same rules, in Python)."""
    words = text.split()
    if "\ufffd" in text or not words or re.search(r"\s{5,}", text) or text != text.rstrip():
        return False
    if len(words) <= int(max_words * FREE_END_SHARE):
        return all(len(w) <= MAX_WORD_CHARS for w in words)
    # longer: the last word ends at a sentence end (up to two closers after MAX_WORD_CHARS characters)
    last = words[-1]
    return (
        len(words) <= max_words
        and all(len(w) <= MAX_WORD_CHARS for w in words[:-1])
        and len(last) <= MAX_WORD_CHARS + 2
        and bool(SENTENCE_END.search(last))
    )


@pytest.fixture(scope="module")
def qwen(tiny_model):
    return tiny_model("qwen2_vl")


def test_a_binding_budget_keeps_every_caption_within_clips_tokens(qwen, coco_photos):
    from capmill.captioner import Captioner

    photos = [str(p) for p in coco_photos[:6]]
    budget = Budget(encoder="clip", limit=24, method="constrain")
    with Captioner(**_kwargs(qwen, 40)) as plain:
        free = plain.caption(photos)
    assert all(_clip_tokens(r.raw) > 24 for r in free)  # unconstrained, every caption is over: the budget binds
    with GatedCaptioner(gate=budget_only_policy(budget), **_kwargs(qwen, 40)) as gated:
        records = gated.caption(photos)
    words = budget_words(budget)
    for record in records:
        quality = record.quality
        kept = quality["attempts"][quality["attempt"]]
        assert quality["passed"] and record.status == "ok"
        assert quality["budget"]["tokens"] == _clip_tokens(record.raw) <= 24  # CLIP's own count, within budget
        assert record.raw == kept["text"] and kept["finish_reason"] == "stop"  # the model ended it: nothing cut
        assert SENTENCE_END.search(record.raw) and record.raw == record.raw.rstrip()
        for entry in quality["attempts"]:
            assert entry["budget_tokens"] == _clip_tokens(entry["text"])
        first = quality["attempts"][0]
        assert first["budget_method"] == "constrain" and len(first["text"].split()) <= words
        if first["finish_reason"] == "stop":  # ended by the grammar (a token budget cut leaves a prefix of it)
            assert _in_word_grammar(first["text"], words)
        assert quality["budget"]["method"] == kept["budget_method"]
        if quality["attempt"] == 2:  # the last retry: the character limit, the word limit in the prompt
            assert kept["budget_method"] == "characters" and kept["change"].endswith("+ word limit")
            assert len(record.raw) <= 24 - 2 - 1 and record.raw.isascii()


def test_where_the_budget_does_not_bind_the_caption_is_the_unconstrained_one(qwen, coco_photos):
    from capmill.captioner import Captioner

    photos = [str(p) for p in coco_photos]
    budget = Budget(encoder="clip", limit=77, method="constrain")
    with Captioner(**_kwargs(qwen, 8)) as plain:
        free = plain.caption(photos)
    with GatedCaptioner(gate=budget_only_policy(budget), **_kwargs(qwen, 8)) as gated:
        records = gated.caption(photos)
    fits = 0
    for base, record in zip(free, records, strict=True):
        first = record.quality["attempts"][0]
        assert first["budget_method"] == "constrain"
        if _in_word_grammar(base.raw, budget_words(budget)):  # the grammar does not bind this output
            fits += 1
            assert first["text"] == base.raw and first["completion_tokens"] == base.tokens["completion"]
        else:  # garbage the grammar refuses (a 40-character "word", broken UTF-8): held to the word rules
            assert _in_word_grammar(first["text"].rstrip(), budget_words(budget)) or first["finish_reason"] == "length"
    assert fits >= len(photos) // 2


def test_the_method_is_chosen_by_what_the_captioner_can_do_and_is_part_of_the_run():
    budget = Budget(encoder="clip", limit=77)
    assert resolve_method(budget, "transformers", "text") == "constrain"
    assert resolve_method(budget, "transformers", "tool_call") == "rewrite"  # a structured caption: a rewrite
    assert resolve_method(budget.model_copy(update={"method": "rewrite"}), "transformers", "text") == "rewrite"
    with pytest.raises(ConfigError, match="--budget-method constrain"):
        resolve_method(budget.model_copy(update={"method": "constrain"}), "transformers", "tool_call")


def test_cli_budget_method(qwen, coco_photos, tmp_path, capsys):
    from capmill.cli.main import main

    args = ["caption", str(coco_photos[0]), "--model", str(qwen), "--profile", "inkscope-2b", "--max-new-tokens", "8"]
    hashes = {}
    for method in ("constrain", "rewrite"):
        out = tmp_path / f"{method}.jsonl"
        assert main([*args, "--budget", "clip:77", "--budget-method", method, "--out", str(out), "-q"]) == 0
        (row,) = [json.loads(line) for line in out.open()]
        budget = row["quality"]["budget"]
        assert budget["method"] == ("constrain" if method == "constrain" else "none")
        assert budget["tokens"] == _clip_tokens(row["raw"])
        hashes[method] = row["prompt_hash"]
    assert hashes["constrain"] != hashes["rewrite"]  # the method is part of the run's identity
    capsys.readouterr()
    assert main([*args, "--budget-method", "constrain", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--budget-method goes with --budget" in capsys.readouterr().err


def test_a_constrained_try_that_errors_is_retried_without_the_grammar():
    """Plumbing only (a scripted engine): a server that refuses the grammar errors; the retry goes without it."""
    from PIL import Image

    from capmill.quality.gate import Gate
    from capmill.records import Decoding, Generation, Request

    seen: list[list[bool]] = []

    def refuses_grammars(requests):
        seen.append([r.constraint is not None for r in requests])
        return [
            Generation(text="", finish_reason="error", error="400: unknown field structured_outputs")
            if r.constraint
            else Generation(text="A dog on a lawn.", completion_tokens=6)
            for r in requests
        ]

    policy = budget_only_policy(Budget(encoder="clip", limit=77, method="constrain"))
    gate = Gate(policy, budget_method="constrain")
    image = Image.new("RGB", (32, 24))
    request = Request(
        item_id="a", messages=[{"role": "user", "content": "Describe."}], decoding=Decoding(), images=[image]
    )
    (out,) = gate.run([request], refuses_grammars)
    assert seen == [[True], [False]]
    first, second = out.quality["attempts"]
    assert first["reasons"] == ["error"] and first["budget_method"] == "constrain"
    assert second["reasons"] == [] and second["budget_method"] == "none" and out.quality["passed"]
