"""The checks that fail a caption, the policy file, and what an attempt changes in a request."""

from __future__ import annotations

import pytest
from PIL import Image

from capmill.errors import ConfigError
from capmill.quality.degenerate import is_loop, is_refusal, wrong_language
from capmill.quality.policy import Attempt, GatePolicy, load_policy
from capmill.quality.requests import apply_attempt, with_prompt
from capmill.records import Decoding, Request

PHOTO = Image.new("RGB", (8, 8))


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("a dog a dog a dog on the grass", True),
        ("law law law law co", True),
        ("A cat sits on a mat. A dog sits on a rug. A bird sits on a branch.", False),
        ("A man rides a horse. A man rides a horse. A man rides a horse.", True),
        ("Two dogs play with a red ball on a sunny beach near the water.", False),
        ("very very good", False),
    ],
)
def test_loops(text, loop):
    assert is_loop(text) is loop


def test_refusals():
    assert is_refusal("I'm sorry, but I can't describe this image.")
    assert is_refusal("As an AI, I cannot see images.")
    assert not is_refusal("A sorry-looking dog sits in the rain.")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("A dog runs along the beach at sunset.", None),
        ("Un chien court sur la plage au coucher du soleil.", "fr"),
        ("一只狗在日落时沿着海滩奔跑", "zh"),
        ("Дети играют в парке", "ru"),
        ("Two cats", None),  # too short to judge by words
        ("A bowl of pho and banh mi on a table", None),
    ],
)
def test_wrong_language(text, found):
    assert wrong_language(text, "en") == found


def test_policy_file_and_its_errors(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(
        "checks: {language: en, truncated: false}\n"
        "attempts:\n  - {temperature: 0.5, do_sample: true}\n  - {prompt: 'Describe it briefly.'}\n"
        "max_attempts: 2\non_fail: invalid\n"
    )
    policy = load_policy(path)
    assert policy.checks.language == "en" and not policy.checks.truncated
    assert [a.label() for a in policy.retries()] == ["do_sample=True, temperature=0.5"]
    assert load_policy(None) == GatePolicy()
    path.write_text("checks: {lenguage: en}\n")
    with pytest.raises(ConfigError, match=r"gate.yaml: checks.lenguage: Extra inputs"):
        load_policy(path)
    path.write_text("checks: {min_clip_score: 0.5}\n")
    with pytest.raises(ConfigError, match="min_clip_score needs a scorer"):
        load_policy(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def _request(**kw) -> Request:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
    ]
    return Request(item_id="a", messages=messages, decoding=Decoding(max_new_tokens=40), images=[PHOTO], **kw)


def test_an_attempt_changes_decoding_budget_and_prompt_only():
    request = _request()
    changed = apply_attempt(
        request, Attempt(do_sample=True, temperature=0.7, max_new_tokens_factor=2.0, prompt="Say what you see.")
    )
    assert changed.decoding == Decoding(max_new_tokens=80, do_sample=True, temperature=0.7)
    assert changed.messages[0] == request.messages[0]
    assert changed.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "Say what you see."}]
    assert request.messages[1]["content"][1]["text"] == "Describe this image."  # the original is untouched
    plain = Request(item_id="b", messages=[], decoding=Decoding(), prompt_text="Question: describe. Answer:")
    assert with_prompt(plain, "Caption:").prompt_text == "Caption:"
    hinted = apply_attempt(request, Attempt(), hint=" Answer in at most 20 words.")
    assert hinted.messages[1]["content"][-1]["text"] == "Describe this image. Answer in at most 20 words."
    text_mode = Request(item_id="c", messages=request.messages, decoding=Decoding())  # no image: text is the input
    assert apply_attempt(text_mode, Attempt(prompt="other"), hint=" short").messages == request.messages
