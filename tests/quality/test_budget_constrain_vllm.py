"""--budget-method constrain on vLLM (structured outputs): the same word-limit grammar gives the same captions as
the transformers engine (llguidance), and every kept caption is within the target tokenizer's count (here the
tiny Qwen2-VL's own tokenizer: the vLLM environment has no open_clip). Runs there (marker `vllm`)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

VLLM = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}


@pytest.mark.vllm
def test_vllm_constrains_the_budget_as_transformers_does(tiny_model, coco_photos):
    from transformers import AutoTokenizer

    from capmill.quality.gated import GatedCaptioner
    from capmill.quality.policy import Budget, budget_only_policy

    qwen = tiny_model("qwen2_vl")
    photos = [str(p) for p in coco_photos[:4]]
    policy = budget_only_policy(Budget(encoder=str(qwen), limit=20, method="constrain"))
    common = {"model": str(qwen), "profile": "inkscope-2b", "decoding": {"max_new_tokens": 40}, "batch_size": 4}
    runs = {}
    for engine, options in (("transformers", {"threads": 2}), ("vllm", VLLM)):
        with GatedCaptioner(gate=policy, engine=engine, engine_options=options, **common) as gated:
            runs[engine] = gated.caption(photos)
    tokenizer = AutoTokenizer.from_pretrained(str(qwen))
    for ref, got in zip(runs["transformers"], runs["vllm"], strict=True):
        first_ref, first_got = ref.quality["attempts"][0], got.quality["attempts"][0]
        assert first_got["budget_method"] == "constrain"
        assert first_got["text"] == first_ref["text"]  # the same grammar, the same greedy tokens
        assert first_got["finish_reason"] == first_ref["finish_reason"]
        assert got.quality["passed"] and len(tokenizer(got.raw)["input_ids"]) == got.quality["budget"]["tokens"] <= 20
