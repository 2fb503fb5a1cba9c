"""No tag twice in a tag list on vLLM in-process (capmill.engines.vllm_tag_dedupe beside its llguidance grammar).

Runs in the vLLM environment (marker `vllm`); elsewhere tests/conftest.py skips it. The "plain" grammar is the same
tag grammar without its last line (the vocabulary the processor reads): vLLM then decodes it as before.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from capmill.engines.grammars import UNIQUE_TAGS, text_form_grammar

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
VLLM_OPTIONS = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}
PROFILE = "inkscope-2b"
VOCAB = ["1girl", "solo", "outdoors", "red hair", "hair", "dog", "dog collar", "smile", "hat"]


def plain(grammar: str) -> str:
    lines = grammar.rstrip("\n").split("\n")
    assert lines[-1].startswith(UNIQUE_TAGS)
    return "\n".join(lines[:-1]) + "\n"


def repeats(text: str, prefix: str = "") -> bool:
    tags = text[len(prefix) :].split(", ")
    return len(set(tags)) != len(tags)


@pytest.fixture(scope="module")
def engines(tiny_model, coco_photos):
    """(transformers captioner, vLLM engine, requests) on the same tiny model and photos."""
    from capmill.captioner import Captioner
    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.models.catalog import get_profile

    path = str(tiny_model("qwen2_vl"))
    cap = Captioner(model=path, profile=PROFILE, decoding={"max_new_tokens": 64})
    requests = [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(coco_photos[:4])]
    engine = VLLMEngine(path, get_profile(PROFILE), VLLM_OPTIONS)
    yield cap, engine, requests
    engine.close()
    cap.close()


def with_grammars(requests, grammars):
    return [
        dataclasses.replace(r, constraint={"grammar": g} if g else None)
        for r, g in zip(requests, grammars, strict=True)
    ]


def test_no_tag_twice_on_vllm(engines):
    cap, engine, requests = engines
    grammar = text_form_grammar(prefix="ohwx, ", tags=VOCAB, max_tags=len(VOCAB))
    before = engine.generate(with_grammars(requests, [plain(grammar)] * 4))
    assert all(g.error is None for g in before) and sum(repeats(g.text, "ohwx, ") for g in before) >= 2
    rows = with_grammars(requests, [grammar, grammar, None, grammar])
    got = engine.generate(rows)
    ref = cap.generate(rows)  # the transformers engine: the same check beside the same grammar
    assert all(g.error is None for g in got), [g.error for g in got]
    for i in (0, 1, 3):
        tags = got[i].text[len("ohwx, ") :].split(", ")
        assert got[i].text.startswith("ohwx, ") and got[i].finish_reason == "stop"
        assert len(set(tags)) == len(tags) <= len(VOCAB) and set(tags) <= set(VOCAB)
        assert got[i].text == ref[i].text  # greedy: the same tags in the same order as transformers
    assert got[2].text == ref[2].text  # an unconstrained row beside them is left alone


def test_where_no_tag_would_repeat_vllm_decodes_as_the_plain_grammar(engines):
    _, engine, requests = engines
    words = ["cat", "dog", "tree", "sky", "grass", "car", "road", "man", "woman", "child", "ball", "hat", "red"]
    first = engine.generate(with_grammars(requests, [plain(text_form_grammar(tags=words, max_tags=30))] * 4))
    counts = []
    for gen in first:
        tags = gen.text.split(", ")
        counts.append(next((k for k in range(len(tags)) if tags[k] in tags[:k]), len(tags)))
    grammars = [text_form_grammar(tags=words, max_tags=k) for k in counts]
    before = engine.generate(with_grammars(requests, [plain(g) for g in grammars]))
    assert not any(repeats(g.text) for g in before)
    after = engine.generate(with_grammars(requests, grammars))
    for b, a in zip(before, after, strict=True):
        assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)


def test_a_large_vocabulary_on_vllm(engines):
    _, engine, requests = engines
    vocab = [f"tag {i}" for i in range(5000)]
    grammar = text_form_grammar(tags=vocab, max_tags=30)
    before = engine.generate(with_grammars(requests[:2], [plain(grammar)] * 2))
    after = engine.generate(with_grammars(requests[:2], [grammar] * 2))
    assert any(repeats(g.text) for g in before)
    for gen in after:
        tags = gen.text.split(", ")
        assert gen.error is None
        # a budget cut may leave the last tag unfinished (vLLM has no wrap-up): the tags before it are whole
        whole = tags if gen.finish_reason == "stop" else tags[:-1]
        assert len(set(tags)) == len(tags) <= 30 and set(whole) <= set(vocab)
