"""Text-form constraints in real decoding (transformers engine, tiny Qwen2-VL, real photos, one batch).

Where a constraint does not bind (a prefix the model writes anyway, banned words it never writes, required words
it writes), the greedy output equals unconstrained decoding token for token; where it binds, the output keeps it.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from capmill.engines.grammars import text_form_grammar

MAX_NEW = 24


@pytest.fixture(scope="module")
def setup(tiny_model, coco_photos):
    from capmill.captioner import Captioner

    captioner = Captioner(model=str(tiny_model("qwen2_vl")), decoding={"max_new_tokens": MAX_NEW})
    photos = coco_photos[:4]  # different sizes and aspect ratios, one batch
    requests = [captioner.prepare(captioner.to_item(str(p))) for p in photos]
    plain = captioner.generate(requests)
    yield captioner, requests, plain
    captioner.close()


def decode(captioner, requests, grammars):
    rows = [
        dataclasses.replace(r, constraint={"grammar": g} if g else None)
        for r, g in zip(requests, grammars, strict=True)
    ]
    return captioner.generate(rows)


def words(text):
    return re.findall(r"[^\W\d_]+", text.lower())


def test_equal_to_unconstrained_where_the_constraint_does_not_bind(setup):
    captioner, requests, plain = setup
    grammars = []
    for gen in plain:
        if "\ufffd" in gen.text:  # broken UTF-8: any text grammar binds there (it admits only valid text)
            grammars.append(None)
            continue
        present = words(gen.text)
        absent = [w for w in ("zebra", "giraffe", "umbrella", "kite") if w not in present]
        grammars.append(text_form_grammar(prefix=gen.text[:6], banned=absent, required=present[:2] if present else ()))
    assert sum(g is not None for g in grammars) >= 2
    constrained = decode(captioner, requests, grammars)
    for before, after in zip(plain, constrained, strict=True):
        assert after.text == before.text
        assert after.completion_tokens == before.completion_tokens == MAX_NEW


def test_a_banned_word_never_appears(setup):
    captioner, requests, plain = setup
    banned = [words(g.text)[0] for g in plain]  # each row's own first word, which it would write
    out = decode(captioner, requests, [text_form_grammar(banned=[b]) for b in banned])
    for b, gen, before in zip(banned, out, plain, strict=True):
        # the token budget may cut the output inside a longer word that starts with the banned one ("law" of
        # "lawful"): the last word then is the banned one, and the recipe stage removes it (trim_banned_tail)
        kept = words(gen.text)[:-1] if gen.finish_reason == "length" else words(gen.text)
        assert b not in kept
        assert gen.text != before.text


def test_forced_prefix_and_required_word(setup):
    captioner, requests, _ = setup
    out = decode(captioner, requests, [text_form_grammar(prefix="ohwx woman, ")] * len(requests))
    assert all(g.text.startswith("ohwx woman, ") for g in out)


def test_tag_vocabulary(setup):
    captioner, requests, _ = setup
    vocab = ["1girl", "solo", "outdoors", "red hair", "dog", "smile", "hat"]
    out = decode(captioner, requests, [text_form_grammar(tags=vocab, max_tags=3)] * len(requests))
    for gen in out:
        tags = gen.text.split(", ")
        assert 1 <= len(tags) <= 3
        assert set(tags) <= set(vocab)
        assert gen.finish_reason == "stop"  # ended at a tag boundary, not cut by the token budget


def test_word_limit_ends_at_a_sentence(setup):
    captioner, requests, _ = setup
    out = decode(captioner, requests, [text_form_grammar(max_words=6)] * len(requests))
    for gen in out:
        assert len(gen.text.split()) <= 6
        assert gen.text.rstrip()[-1] in ".!?"
        assert gen.completion_tokens <= MAX_NEW


def test_unconstrained_rows_beside_constrained_ones_are_untouched(setup):
    captioner, requests, plain = setup
    grammars = [text_form_grammar(prefix="ohwx, "), None, text_form_grammar(tags=["dog"]), None]
    out = decode(captioner, requests, grammars)
    assert out[1].text == plain[1].text and out[3].text == plain[3].text
