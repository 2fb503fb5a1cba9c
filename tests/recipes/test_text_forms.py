"""Text-form grammars (capmill.engines.grammars.text_form_grammar) through llguidance on a real tokenizer."""

from __future__ import annotations

import pytest

from capmill.engines.grammars import CUT_ANYWHERE, grammar_for, text_form_grammar
from capmill.errors import ConfigError


@pytest.fixture(scope="module")
def matcher_for(tiny_model):
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model("qwen2_vl"))
    ll = llguidance.hf.from_tokenizer(tok)

    def accepts(grammar: str, text: str) -> tuple[bool, bool]:
        """(every token of `text` allowed, the grammar may end after it)."""
        m = llguidance.LLMatcher(ll, grammar_for({"grammar": grammar}), log_level=0)
        assert not m.is_error(), m.get_error()
        ok = all(m.consume_token(t) for t in tok.encode(text, add_special_tokens=False))
        return ok, ok and m.is_accepting()

    return accepts


def test_prefix_banned_required(matcher_for):
    g = text_form_grammar(prefix="ohwx woman, ", banned=["cat", "big dog"], required=["red"])
    assert g.startswith("// capmill: text-form\n" + CUT_ANYWHERE)
    assert matcher_for(g, "ohwx woman, a red scarf") == (True, True)
    assert matcher_for(g, "ohwx woman, a blue scarf") == (True, False)  # may go on, may not end without "red"
    assert matcher_for(g, "a woman") == (False, False)  # the prefix comes first
    assert matcher_for(g, "ohwx woman, a red CAT") == (True, False)  # may only go on into another word ("CATS")
    assert not matcher_for(g, "ohwx woman, a red CAT ")[0]  # any case
    assert not matcher_for(g, "ohwx woman, a red big  dog.")[0]  # any spacing inside a phrase
    assert matcher_for(g, "ohwx woman, red cats and big dogs") == (True, True)  # whole words only


def test_tag_vocabulary(matcher_for):
    g = text_form_grammar(tags=["1girl", "solo", "red hair", "hat (object)"], max_tags=3)
    assert CUT_ANYWHERE not in g
    assert matcher_for(g, "1girl, hat (object), red hair") == (True, True)
    assert not matcher_for(g, "1girl, hat (object), red hair, solo")[0]  # at most 3
    assert matcher_for(g, "solo, 1girl, solo") == (True, True)  # repeats: removed by the stage (test_recipe_run)
    assert not matcher_for(g, "solo, blue hair")[0]  # only the vocabulary
    assert not matcher_for(g, "solo,1girl")[0]  # ", " between tags
    assert matcher_for(g, "solo, red") == (True, False)  # a tag is not finished mid-way


def test_word_limit_ends_at_a_sentence(matcher_for):
    g = text_form_grammar(max_words=4)
    assert matcher_for(g, "A dog on grass.") == (True, True)
    assert matcher_for(g, "A dog on grass") == (True, False)  # not at a sentence end
    assert not matcher_for(g, "A dog on the grass.")[0]  # five words
    s = text_form_grammar(sentence_end=True)
    assert matcher_for(s, "A dog. It runs!") == (True, True)
    assert matcher_for(s, "A dog. It runs") == (True, False)


def test_a_large_vocabulary(matcher_for):
    vocab = [f"tag {i}" for i in range(5000)]
    g = text_form_grammar(tags=vocab, max_tags=20)
    assert matcher_for(g, ", ".join(vocab[::250])) == (True, True)
    assert not matcher_for(g, ", ".join(vocab[:21]))[0]


def test_a_banned_word_left_by_the_budget_is_trimmed():
    from capmill.recipes.stage import trim_banned_tail

    assert trim_banned_tail("ohwx, a red law", ("law",)) == ("ohwx, a red", "law")
    assert trim_banned_tail("a big  Dog.", ("cat", "big dog")) == ("a", "big  Dog.")
    assert trim_banned_tail("a lawful", ("law",)) == ("a lawful", "")


def test_dedupe_tags():
    from capmill.recipes.stage import dedupe_tags

    assert dedupe_tags("ohwx, dog, cat, dog, cat, sky", "ohwx, ") == ("ohwx, dog, cat, sky", ["dog", "cat"])


def test_malformed_settings():
    with pytest.raises(ConfigError, match="max_words must be at least 1"):
        text_form_grammar(max_words=0)
    with pytest.raises(ConfigError, match="the vocabulary is empty"):
        text_form_grammar(tags=[])
    with pytest.raises(ConfigError, match="banned: an empty word"):
        text_form_grammar(banned=["  "])
