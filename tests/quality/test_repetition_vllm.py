"""Repetition loops end while decoding on vLLM too (capmill.engines.vllm_repetition), as in the transformers engine.

Runs in the vLLM environment (marker `vllm`); elsewhere tests/conftest.py skips it.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from capmill.quality.repetition import RepetitionSettings, looping

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
VLLM_OPTIONS = {"enforce_eager": True, "max_model_len": 4096, "dtype": "float32"}
PROFILE = "inkscope-2b"
TOKENS = 64
ASKED = {"max_ngram": 8, "min_repeats": 3, "single_token_repeats": 4}


@pytest.fixture(scope="module")
def engines(tiny_model, coco_photos):
    from capmill.captioner import Captioner
    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.models.catalog import get_profile

    path = str(tiny_model("qwen2_vl"))
    cap = Captioner(model=path, profile=PROFILE, decoding={"max_new_tokens": TOKENS})
    requests = [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(coco_photos[:8])]
    engine = VLLMEngine(path, get_profile(PROFILE), VLLM_OPTIONS)
    yield cap, engine, requests
    engine.close()
    cap.close()


def test_a_looping_row_ends_early_on_vllm_as_on_transformers(engines):
    cap, engine, requests = engines
    asked = [dataclasses.replace(r, stop_repetition=dict(ASKED)) for r in requests]
    asked[1] = dataclasses.replace(asked[1], stop_repetition=None)  # this row did not ask: it runs its budget
    full = engine.token_ids(requests)
    stopped_ids = engine.token_ids(asked)
    settings = RepetitionSettings(**ASKED)
    ended = []
    for row, (ours, theirs) in enumerate(zip(stopped_ids, full, strict=True)):
        if len(ours) < len(theirs):
            kept = ours[:-1]  # the row ended on its stop token, after the loop's tokens it had
            assert kept == theirs[: len(kept)], f"row {row}: not a prefix of its unstopped output"
            assert looping(torch.as_tensor(kept), settings), f"row {row} ended without a loop"
            ended.append(row)
        else:
            assert ours == theirs, f"row {row}: changed without ending"
    assert ended, "the tiny model should loop on at least one photo within 64 tokens"
    assert 1 not in ended
    # the same captions as the transformers engine, which ends a loop with a stopping criterion
    on_vllm = [g.text for g in engine.generate(asked)]
    on_transformers = [g.text for g in cap.engine.generate(asked)]
    assert on_vllm == on_transformers
