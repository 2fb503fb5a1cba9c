"""TransformersEngine on a real tiny Qwen2-VL: batching, ordering, stop strings, failures, options."""

from __future__ import annotations

import pytest

from capmill.errors import ConfigError
from capmill.models.catalog import get_profile
from capmill.models.families import get_family
from capmill.records import Decoding


@pytest.fixture(scope="module")
def engine(tiny_model):
    from capmill.engines import ENGINES

    eng = ENGINES.get("transformers")(str(tiny_model("qwen2_vl")), get_profile("inkscope-2b"), {"max_batch_size": 4})
    yield eng
    eng.close()


def _requests(coco_photos, n, decoding=Decoding(max_new_tokens=8)):
    from PIL import Image

    family = get_family("qwen2_vl")
    out = []
    for i in range(n):
        image = Image.open(coco_photos[i]).convert("RGB")
        out.append(family.build_request(f"r{i}", prompt="Describe.", system=None, decoding=decoding, images=[image]))
    return out


def test_describe_and_defaults(engine):
    d = engine.describe()
    assert d["engine"] == "transformers" and d["family"] == "qwen2_vl"
    assert (d["device"], d["dtype"], d["attn_implementation"]) == ("cpu", "float32", "sdpa")
    assert engine.processor.tokenizer.padding_side == "left"


def test_order_is_kept_across_sorted_sub_batches(engine, coco_photos):
    requests = _requests(coco_photos, 6)
    together = engine.generate(requests)  # two sub-batches of at most 4, sorted by size inside the engine
    alone = [engine.generate([r])[0] for r in requests]
    assert [g.text for g in together] == [g.text for g in alone]
    assert len({g.text for g in together}) > 1
    assert {g.timings["batch_size"] for g in together} <= {2, 4}
    for g in together:
        assert g.prompt_tokens > 20 and g.completion_tokens == 8 and g.finish_reason == "length"
        assert g.timings["generate"] > 0 and g.timings["preprocess"] > 0


def test_stop_string_ends_the_output(engine, coco_photos):
    request = _requests(coco_photos, 1, Decoding(max_new_tokens=12))[0]
    full = engine.generate([request])[0]
    # choose a stop string from the middle of the free-running output: generation must end right after it
    ids = engine.tokenizer(full.text, add_special_tokens=False)["input_ids"]
    stop = engine.tokenizer.decode(ids[4:5]).strip() or engine.tokenizer.decode(ids[4:6])
    assert stop and stop in full.text
    stopped = engine.generate([_requests(coco_photos, 1, Decoding(max_new_tokens=12, stop=(stop,)))[0]])[0]
    assert stopped.text == full.text[: full.text.index(stop) + len(stop)] or stopped.text.endswith(stop)
    assert stopped.completion_tokens < full.completion_tokens
    assert stopped.finish_reason == "stop"


def test_one_bad_request_fails_alone(engine, coco_photos):
    from PIL import Image

    requests = _requests(coco_photos, 3)
    requests[1].images = [Image.new("RGB", (4000, 10))]  # aspect ratio the Qwen processor refuses
    out = engine.generate(requests)
    assert out[1].error and out[1].finish_reason == "error"
    assert not out[0].error and not out[2].error
    assert out[0].text == engine.generate([requests[0]])[0].text


def test_constraint_without_the_hook_module_is_skipped_or_applied(engine, coco_photos):
    request = _requests(coco_photos, 1)[0]
    request.constraint = {"json_schema": {"type": "object"}}
    (g,) = engine.generate([request])
    assert g.error is None  # either the hook constrained it or, when absent, generation ran unconstrained


def test_bad_options_fail_at_once(tiny_model):
    from capmill.engines.transformers_engine import TransformersEngine

    with pytest.raises(ConfigError, match="dtype"):
        TransformersEngine(str(tiny_model("qwen2_vl")), get_profile("inkscope-2b"), {"dtype": "int3"})
    with pytest.raises(ConfigError, match="unknown option 'nonsense'; accepted options: .*attn_implementation"):
        TransformersEngine(str(tiny_model("qwen2_vl")), get_profile("inkscope-2b"), {"nonsense": 1})


def test_rows_that_ask_end_at_a_repetition_loop_during_decoding(tiny_model, coco_photos):
    """The quality gate's loop stop (Request.stop_repetition) ends a looping row inside the engine's generate."""
    from capmill.captioner import Captioner

    with Captioner(model=str(tiny_model("qwen2_vl")), profile="inkscope-2b", decoding={"max_new_tokens": 64}) as cap:
        requests = [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(coco_photos[:8])]
        full = cap.generate(requests)
        for request in requests:
            request.stop_repetition = {"max_ngram": 8, "min_repeats": 3, "single_token_repeats": 4}
        stopped = cap.generate(requests)
    shorter = [
        i for i, (a, b) in enumerate(zip(full, stopped, strict=True)) if b.completion_tokens < a.completion_tokens
    ]
    assert shorter, "no row looped within 64 tokens: the tiny model no longer tests the stop"
    for a, b in zip(full, stopped, strict=True):
        assert a.text.startswith(b.text.rstrip("\ufffd"))  # the same tokens, ended early
