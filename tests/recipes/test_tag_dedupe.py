"""No tag twice in a tag list, refused while decoding (capmill.engines.tag_dedupe through the transformers engine).

The "plain" grammar below is the same tag grammar without its last line (the vocabulary the engines read), so it
decodes as before: a tiny random model repeats tags there, and the check must make it pick others instead.
"""

from __future__ import annotations

import dataclasses

import pytest

from capmill.engines.grammars import UNIQUE_TAGS, text_form_grammar

PROFILE = "inkscope-2b"
VOCAB = ["1girl", "solo", "outdoors", "red hair", "hair", "dog", "dog collar", "smile", "hat"]


def plain(grammar: str) -> str:
    """The tag grammar without its vocabulary line: repeats are not refused while decoding."""
    lines = grammar.rstrip("\n").split("\n")
    assert lines[-1].startswith(UNIQUE_TAGS)
    return "\n".join(lines[:-1]) + "\n"


def completable(text: str, vocab: set[str], most: int, used: frozenset[str] = frozenset()) -> bool:
    """Oracle, by search: can ``text`` grow into a list of at most ``most`` distinct tags from ``vocab``?"""
    if len(used) >= most:
        return False
    for tag in vocab - used:
        sep = tag + ", "
        if len(text) <= len(tag):
            if tag.startswith(text):
                return True
        elif len(text) < len(sep):
            if sep.startswith(text) and completable("", vocab, most, used | {tag}):
                return True
        elif text.startswith(sep) and completable(text[len(sep) :], vocab, most, used | {tag}):
            return True
    return False


def repeats(text: str, prefix: str = "") -> bool:
    tags = text[len(prefix) :].split(", ")
    return len(set(tags)) != len(tags)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model("qwen2_vl"))


@pytest.mark.parametrize(
    ("prefix", "most", "text"),
    [
        ("", 4, "dog, dog collar, hair, red hair"),
        ("", 4, "dog collar, dog, hat"),
        ("ohwx, ", 9, "ohwx, hair, red hair, dog, smile, solo, outdoors, 1girl, dog collar, hat"),
        ("", 3, "red hair, hair, dog"),
    ],
)
def test_allowed_tokens_are_exactly_those_that_keep_the_list_free_of_repeats(tokenizer, prefix, most, text):
    """Along a list written token by token (the longest tokens, then single bytes: tokens that end inside tags
    and inside separators), the tokens left allowed are the grammar's minus exactly those after which every
    completion repeats a tag."""
    import llguidance
    import torch

    from capmill.engines.constrained import logits_processors

    grammar = text_form_grammar(prefix=prefix, tags=VOCAB, max_tags=most)
    ll = logits_processors(tokenizer, [{"grammar": grammar}]).tok.ll  # the engine's view: all chat end markers
    walked = []
    for pick in (max, min):  # by token length
        processor = logits_processors(tokenizer, [{"grammar": grammar}])
        reference = llguidance.LLMatcher(ll, plain(grammar), log_level=0)
        seq, written, steps = [0], b"", 0
        while True:
            scores = processor(torch.tensor([seq]), torch.zeros((1, len(tokenizer))))
            allowed = set(torch.isfinite(scores[0]).nonzero().flatten().tolist())
            bias = reference.compute_logit_bias()
            expected = set()
            for t in (t for t in range(ll.vocab_size) if bias[t]):
                if ll.is_special_token(t):  # an end marker: the grammar allows the end only after a whole list
                    ok = not repeats(written.decode(), prefix)
                else:
                    full = (written + ll.decode_bytes([t])).decode("utf-8", "replace")
                    ok = len(full) <= len(prefix) or completable(full[len(prefix) :], set(VOCAB), most)
                if ok:
                    expected.add(t)
            assert allowed == expected, (written, sorted(allowed ^ expected)[:10])
            rest = text.encode()[len(written) :]
            if not rest:
                break
            # the list itself repeats no tag: some allowed token always goes on with it
            fits = [t for t in allowed if not ll.is_special_token(t) and rest.startswith(ll.decode_bytes([t]))]
            token = pick(fits, key=lambda t: len(ll.decode_bytes([t])))
            assert reference.consume_token(token)
            seq.append(token)
            written += ll.decode_bytes([token])
            steps += 1
        assert tokenizer.eos_token_id in allowed  # a complete list may end
        walked.append(steps)
    assert walked[1] > walked[0]  # the short tokens stopped inside tags and separators


def test_a_row_the_check_would_leave_without_a_token_keeps_its_grammar(tokenizer):
    """A grammar that demands a repeat (its body says "dog, dog", its last line lists only "dog"): once every way on
    is banned, the row keeps the grammar's own tokens instead of being left with none."""
    import json

    import torch

    from capmill.engines.constrained import logits_processors

    marker = UNIQUE_TAGS + json.dumps({"prefix": "", "tags": ["dog"]})
    grammar = f'// capmill: text-form\nstart: "dog, dog"\n{marker}\n'
    processor = logits_processors(tokenizer, [{"grammar": grammar}])
    seq = [0]
    for t in tokenizer.encode("dog, dog", add_special_tokens=False):
        scores = processor(torch.tensor([seq]), torch.zeros((1, len(tokenizer))))
        assert bool(torch.isfinite(scores[0, t]))
        seq.append(t)
    scores = processor(torch.tensor([seq]), torch.zeros((1, len(tokenizer))))
    assert bool(torch.isfinite(scores[0, tokenizer.eos_token_id])) and processor.errors == [None]


@pytest.fixture(scope="module")
def captioner(tiny_model, coco_photos):
    from capmill.captioner import Captioner

    cap = Captioner(model=str(tiny_model("qwen2_vl")), profile=PROFILE, decoding={"max_new_tokens": 64})
    requests = [cap.prepare(cap.to_item(str(p))) for p in coco_photos[:4]]  # sizes and aspect ratios differ
    yield cap, requests
    cap.close()


def decode(captioner, grammars):
    cap, requests = captioner
    rows = [dataclasses.replace(r, constraint={"grammar": g}) for r, g in zip(requests, grammars, strict=True)]
    return cap.generate(rows)


@pytest.fixture(scope="module")
def repeating(captioner):
    """A tag grammar, and what the plain one makes of it: this model repeats tags there on every photo."""
    grammar = text_form_grammar(prefix="ohwx, ", tags=VOCAB, max_tags=len(VOCAB))
    before = decode(captioner, [plain(grammar)] * 4)
    assert all(repeats(g.text, "ohwx, ") for g in before)
    return grammar, before


def test_a_model_that_repeats_tags_picks_other_tags(captioner, repeating):
    grammar, _ = repeating
    most = len(VOCAB)
    after = decode(captioner, [grammar] * 4)
    for gen in after:
        assert gen.error is None and gen.text.startswith("ohwx, ")
        tags = gen.text[len("ohwx, ") :].split(", ")
        assert len(set(tags)) == len(tags) <= most
        assert set(tags) <= set(VOCAB)
        assert gen.finish_reason == "stop"


def test_where_no_tag_would_repeat_the_output_is_the_plain_grammars_token_for_token(captioner):
    words = ["cat", "dog", "tree", "sky", "grass", "car", "road", "man", "woman", "child", "ball", "hat", "red"]
    first = decode(captioner, [plain(text_form_grammar(tags=words, max_tags=30))] * 4)
    # per row, as many tags as the plain grammar lists before its first repeat: a list with no repeat in it
    counts = []
    for gen in first:
        tags = gen.text.split(", ")
        counts.append(next((k for k in range(len(tags)) if tags[k] in tags[:k]), len(tags)))
    grammars = [text_form_grammar(tags=words, max_tags=k) for k in counts]
    before = decode(captioner, [plain(g) for g in grammars])
    assert not any(repeats(g.text) for g in before)
    assert sum(len(g.text.split(", ")) >= 2 for g in before) >= 2
    after = decode(captioner, grammars)
    for b, a in zip(before, after, strict=True):
        assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)


def test_a_large_vocabulary(captioner):
    vocab = [f"tag {i}" for i in range(5000)]  # many tags are prefixes of others: "tag 7", "tag 77", "tag 777"
    grammar = text_form_grammar(tags=vocab, max_tags=30)
    before = decode(captioner, [plain(grammar)] * 2 + [None] * 2)
    after = decode(captioner, [grammar] * 2 + [None] * 2)
    assert any(repeats(g.text) for g in before[:2])
    for gen in after[:2]:
        tags = gen.text.split(", ")
        assert len(set(tags)) == len(tags) <= 30 and set(tags) <= set(vocab)
    assert [g.text for g in after[2:]] == [g.text for g in before[2:]]  # unconstrained rows beside them


def test_a_recipe_stage_lists_each_tag_once_without_removing_any(tmp_path, tiny_model, coco_photos, repeating):
    """Through a recipe, on the transformers engine and through `capmill serve` (the grammar sent as vLLM's
    `structured_outputs`): where the plain grammar repeats tags (the same model, prompt and photos), the stage's
    tags come out unique from decoding, so its removal after decoding (and the note it leaves) has nothing to do."""
    import shutil

    from capmill.captioner import Captioner
    from capmill.recipes import Recipe
    from capmill.run.runfolder import read_records
    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig
    from live_server import UvicornThread

    constraints = {"prefix": "ohwx, ", "tags": VOCAB, "max_tags": len(VOCAB)}
    assert repeating[0] == text_form_grammar(**constraints)  # the grammar the stage compiles
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_photos[:4]:  # the captioner fixture's photos; the stage takes the profile's own prompt too
        shutil.copy(p, folder / p.name)
    model = str(tiny_model("qwen2_vl"))
    stage = {"name": "tags", "decoding": {"max_new_tokens": 64}, "constraints": constraints}
    local = Recipe.from_dict({"stages": [{**stage, "model": model, "profile": PROFILE}]})
    local.run([str(folder)], str(tmp_path / "local"), progress=False, workers=0)
    served = Captioner(model=model, profile=PROFILE)
    app = create_app(ServeConfig(served_model_names=[PROFILE], max_batch=4, max_wait_ms=20), captioner=served)
    try:
        with UvicornThread(app) as server:
            options = {"base_url": server.url}
            remote = {**stage, "model": PROFILE, "profile": PROFILE, "engine": "openai", "engine_options": options}
            Recipe.from_dict({"stages": [remote]}).run([str(folder)], str(tmp_path / "remote"), progress=False)
    finally:
        served.close()
    want = {r.id: r for r in read_records(str(tmp_path / "local"))}
    got = {r.id: r for r in read_records(str(tmp_path / "remote"))}
    assert len(want) == 4 and set(got) == set(want)
    for item_id, r in want.items():
        assert r.status == "ok", r.error
        tags = r.caption[len("ohwx, ") :].split(", ")
        assert len(set(tags)) == len(tags) >= 2 and set(tags) <= set(VOCAB)
        assert not any("repeated tags" in note for note in r.notes)
        assert got[item_id].engine == "openai" and got[item_id].caption == r.caption
        assert not any("repeated tags" in note for note in got[item_id].notes)
