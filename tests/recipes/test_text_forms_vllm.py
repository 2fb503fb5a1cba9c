"""Text-form grammars through vLLM in-process (its structured outputs, llguidance backend), against transformers.

Runs in the vLLM environment (marker `vllm`); elsewhere tests/conftest.py skips it.
"""

from __future__ import annotations

import os

import pytest

from capmill.engines.grammars import text_form_grammar

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
VLLM_OPTIONS = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}
PROFILE = "inkscope-2b"


@pytest.mark.vllm
def test_text_forms_on_vllm(tiny_model, coco_photos):
    from capmill.captioner import Captioner
    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.models.catalog import get_profile

    path = str(tiny_model("qwen2_vl"))
    cap = Captioner(model=path, profile=PROFILE, decoding={"max_new_tokens": 16})
    requests = [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(coco_photos[:3])]
    free = text_form_grammar(prefix="ohwx, ", banned=["law"])
    vocab = ["1girl", "solo", "outdoors", "red hair", "dog", "smile", "hat"]
    tags = text_form_grammar(tags=vocab, max_tags=3)
    for request, grammar in zip(requests, (free, tags, free), strict=True):
        request.constraint = {"grammar": grammar}
    ref = cap.generate(requests)  # the transformers engine
    cap.close()
    engine = VLLMEngine(path, get_profile(PROFILE), VLLM_OPTIONS)
    try:
        got = engine.generate(requests)
    finally:
        engine.close()
    assert len(got) == len(ref) and all(g.error is None for g in got), [g.error for g in got]
    # a trigger word and banned words never steer the wrap-up: the same tokens in both engines
    for i in (0, 2):
        assert got[i].text == ref[i].text and got[i].text.startswith("ohwx, ")
        said = got[i].text.lower().replace(",", " ").split()
        assert "law" not in (said[:-1] if got[i].finish_reason == "length" else said)  # a cut tail: trimmed later
    listed = got[1].text.split(", ")
    assert 1 <= len(listed) <= 3 and set(listed[:-1]) <= set(vocab)
