"""The vLLM engine on tiny real-architecture models, in process and offline, against the transformers engine.

Tests marked `vllm` run in the vLLM environment (.ci/vllm-stage); elsewhere tests/conftest.py skips them.
Both engines run there on the same tiny model, photos and prompts; the transformers engine is the reference
(its own fidelity to the model cards is shown in tests/models).
"""

from __future__ import annotations

import importlib.util

import pytest
from vllm_support import QWEN3_5_OPTIONS, QWEN3_5_SIZES, SCAFFOLD, VLLM_OPTIONS, bf16_ulp, first_difference

from capmill.captioner import Captioner
from capmill.engines import ENGINES
from capmill.errors import MissingDependencyError, UnsupportedError
from capmill.models.catalog import get_profile
from capmill.models.families import get_family
from capmill.records import Decoding

N = 16  # new tokens per caption: tiny random models never stop on their own


class _OneAtATime:
    """Engines for this module, one alive at a time (tests are ordered by model, so each loads once)."""

    def __init__(self):
        self.key, self.engine = None, None

    def get(self, name: str, path: str, profile: str, options: dict):
        key = (name, path, profile, repr(sorted(options.items())))
        if key != self.key:
            self.close()
            self.engine = ENGINES.get(name)(path, get_profile(profile), options)
            self.key = key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.key, self.engine = None, None


@pytest.fixture(scope="module")
def engines():
    """`engines(name, path, profile, options)`: the engine, reused while the arguments stay the same."""
    vllm_side, hf_side = _OneAtATime(), _OneAtATime()

    def get(name, path, profile, options):
        return (vllm_side if name == "vllm" else hf_side).get(name, str(path), profile, options)

    yield get
    vllm_side.close()
    hf_side.close()


QWEN2_VL = {**VLLM_OPTIONS, "engine_args": {"disable_log_stats": False}}  # metrics on: prefix-cache hits
HF = {"threads": 2}


def test_registered_by_name_without_importing_vllm():
    from capmill.engines.vllm_engine import VLLMEngine

    assert ENGINES.get("vllm") is VLLMEngine


def test_blip2_is_refused_with_a_pointer_to_transformers(tiny_model):
    from capmill.engines.vllm_engine import VLLMEngine

    with pytest.raises(UnsupportedError, match="--engine transformers"):
        VLLMEngine(str(tiny_model("blip2")), get_profile("blip2-lora"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_error_gives_the_route_for_this_machine(tiny_model):
    from capmill.engines import vllm_options
    from capmill.engines.vllm_engine import VLLMEngine

    with pytest.raises(MissingDependencyError) as info:
        VLLMEngine(str(tiny_model("qwen2_vl")), get_profile("inkscope-2b"))
    route = "capmill[vllm]" if vllm_options.cuda_visible() else "scripts/setup-vllm-env.sh"
    assert route in str(info.value) and "\n" not in str(info.value)


def test_missing_vllm_advice_fits_the_machine(monkeypatch):
    from capmill.engines import vllm_options

    monkeypatch.setattr(vllm_options, "cuda_visible", lambda: True)
    text = str(vllm_options.missing_vllm())
    assert "pip install 'capmill[vllm]'" in text and "environment of its own" in text
    monkeypatch.setattr(vllm_options, "cuda_visible", lambda: False)
    text = str(vllm_options.missing_vllm())
    assert "bash scripts/setup-vllm-env.sh" in text and "capmill[vllm]" not in text


def test_dtype_defaults_to_the_checkpoints_own(tiny_model):
    from capmill.engines.vllm_options import checkpoint_dtype, resolve_dtype
    from capmill.models.resolve import read_model_config

    config = read_model_config(str(tiny_model("qwen2_vl")))
    assert checkpoint_dtype(config) == "float32"  # the tiny models are saved in float32
    assert resolve_dtype("auto", config) == ("float32", "the checkpoint's dtype")
    assert resolve_dtype("bfloat16", config) == ("bfloat16", "asked for")
    assert checkpoint_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"  # older configs
    assert checkpoint_dtype({"text_config": {"dtype": "float16"}}) == "float16"
    assert resolve_dtype("auto", {})[0] == "auto"


def test_cpu_kv_cache_is_chosen_and_said_when_none_is_set(monkeypatch, caplog):
    from capmill.engines.vllm_options import GiB, VLLMOptions, cpu_kv_cache_bytes, kv_cache_choice

    assert [cpu_kv_cache_bytes(m * GiB) // GiB for m in (2, 8, 24, 64, 512)] == [1, 1, 3, 8, 8]
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    with caplog.at_level("WARNING", logger="capmill.engines.vllm"):
        assert kv_cache_choice(VLLMOptions(), "cpu", available=24 * GiB) == 3 * GiB
    assert "KV cache of 3 GiB chosen" in caplog.text and "VLLM_CPU_KVCACHE_SPACE" in caplog.text
    assert kv_cache_choice(VLLMOptions(kv_cache_memory_bytes=GiB), "cpu") == GiB  # the option wins
    assert kv_cache_choice(VLLMOptions(), "cuda") is None  # GPUs: vLLM's gpu_memory_utilization
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")
    assert kv_cache_choice(VLLMOptions(), "cpu") is None  # vLLM reads the variable itself


def test_device_is_checked_against_the_installed_build(monkeypatch):
    from capmill.engines.vllm_options import check_device
    from capmill.errors import ConfigError

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # vllm_support turns it off for in-process tests
    assert check_device("auto", "cpu", 1) is None and check_device("cpu", "cpu", 1) is None
    assert check_device("cuda", "cuda", 2) is None and check_device("cuda:3", "cuda", 1) == 3
    for asked, platform, match in [
        ("cuda", "cpu", "the installed vLLM is the CPU build"),
        ("cpu", "cuda", "scripts/setup-vllm-env.sh"),
        ("tpu", "cuda", "not auto, cpu, cuda or cuda:N"),
        ("cuda:x", "cuda", "not cuda:N"),
    ]:
        with pytest.raises(ConfigError, match=match) as info:
            check_device(asked, platform, 1)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="tensor_parallel_size=2"):
        check_device("cuda:1", "cuda", 2)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(ConfigError, match="VLLM_ENABLE_V1_MULTIPROCESSING"):
        check_device("cuda:1", "cuda", 1)


def test_pinning_narrows_cuda_visible_devices_and_puts_it_back(monkeypatch):
    import os

    from capmill.engines.vllm_options import pinned_to

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pinned_to(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    with pinned_to(1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"


def test_unknown_options_are_refused_with_the_accepted_keys():
    from capmill.engines.vllm_options import VLLMOptions, engine_arg_names
    from capmill.errors import EngineOptionError

    with pytest.raises(EngineOptionError) as info:
        VLLMOptions.checked("vllm", {"tensor_paralel_size": 2})
    text = str(info.value)
    assert "unknown option 'tensor_paralel_size'" in text
    for key in ("tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "enforce_eager", "max_num_seqs",
                "limit_mm_per_prompt", "mm_processor_kwargs", "quantization", "kv_cache_dtype", "trust_remote_code",
                "revision", "device", "engine_args", "mm_encoder_tp_mode"):  # fmt: skip
        assert key in text
    if engine_arg_names():  # with vLLM installed, any other EngineArgs field by its own name
        opts = VLLMOptions.checked("vllm", {"max_num_batched_tokens": 8192, "engine_args": {"seed": 1}})
        assert opts.engine_args == {"max_num_batched_tokens": 8192, "seed": 1}


def _photos(coco_photos, n=6):
    return [str(p) for p in coco_photos[:n]]


def _requests(path, profile, coco_photos, n=6, **decoding):
    """Requests as the Captioner prepares them (the family's prompt and resized pixels) for n COCO photos."""
    cap = Captioner(model=str(path), profile=profile, decoding={"max_new_tokens": N, **decoding})
    items = [cap.to_item(p, i) for i, p in enumerate(_photos(coco_photos, n))]
    return cap, items, [cap.prepare(item) for item in items]


def _assert_same(ref, got):
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        assert g.error is None, g.error
        assert g.text == r.text, f"#{i}: vllm {g.text!r} != transformers {r.text!r}"
        assert (g.prompt_tokens, g.completion_tokens) == (r.prompt_tokens, r.completion_tokens), f"#{i}"
    assert len({r.text for r in ref}) > 1, "outputs do not depend on the image: the comparison would be vacuous"


GREEDY_CASES = {
    "qwen2_vl": ("inkscope-2b", {}),
    "qwen2_5_vl": ("caprl-3b", {"do_sample": False}),  # the card samples; greedy makes tokens comparable
    "internvl": ("caprl-internvl-8b", {"do_sample": False}),
}


def _greedy_equal(engines, tiny_model, coco_photos, arch, options):
    profile, decoding = GREEDY_CASES[arch]
    path = tiny_model(arch)
    cap, items, requests = _requests(path, profile, coco_photos, **decoding)
    ref = engines("transformers", path, profile, HF).generate(requests)
    engine = engines("vllm", path, profile, options)
    got = engine.generate(requests)  # images go with capmill's content hash as vLLM's multimodal ids
    _assert_same(ref, got)
    uuids = engine._prompt(requests[0])["multi_modal_uuids"]["image"]
    assert len(uuids) == 1 and uuids[0].startswith(requests[0].content_hash + ":image0:")
    assert engine.describe()["family"] == arch
    records = [cap.finish(item, request, g) for item, request, g in zip(items, requests, got, strict=True)]
    expected = [cap.finish(item, request, g) for item, request, g in zip(items, requests, ref, strict=True)]
    assert [(r.status, r.caption) for r in records] == [(r.status, r.caption) for r in expected]
    assert all(r.status == "ok" and r.caption for r in records)


# ---- Qwen2-VL (Inkscope) ----
@pytest.mark.vllm
def test_defaults_start_on_the_cpu_and_equal_transformers(engines, tiny_model, coco_photos, monkeypatch, caplog):
    """No option at all and no VLLM_CPU_KVCACHE_SPACE: vLLM starts (a KV cache chosen and logged), runs the
    float32 checkpoint in float32, and its greedy captions equal the transformers engine's."""
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    with caplog.at_level("WARNING", logger="capmill.engines.vllm"):
        _greedy_equal(engines, tiny_model, coco_photos, "qwen2_vl", {})
    engine = engines("vllm", tiny_model("qwen2_vl"), "inkscope-2b", {})
    described = engine.describe()
    if engine.platform == "cpu":
        assert "KV cache of" in caplog.text
        assert engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes >= 1 << 30
    assert (described["dtype"], described["dtype_reason"]) == ("float32", "the checkpoint's dtype")


@pytest.mark.vllm
def test_devices_cpu_cpu_gives_the_records_of_one_engine(engines, tiny_model, coco_photos, tmp_path, monkeypatch):
    """`--devices cpu,cpu --engine vllm` through the CLI: two engines (each in its engine-core process), each with
    its share of every batch; the records equal one in-process engine's. In-process, a second engine is refused."""
    import json

    from capmill.cli.main import main
    from capmill.engines.vllm_engine import VLLMEngine

    path = tiny_model("qwen2_vl")
    photos = _photos(coco_photos, 6)
    one = engines("vllm", path, "inkscope-2b", QWEN2_VL)
    with pytest.raises(UnsupportedError, match="VLLM_ENABLE_V1_MULTIPROCESSING"):
        VLLMEngine(str(path), get_profile("inkscope-2b"), QWEN2_VL)
    cap = Captioner(model=str(path), profile="inkscope-2b", decoding={"max_new_tokens": N})
    items = [cap.to_item(p, i) for i, p in enumerate(photos)]
    generations = one.generate([cap.prepare(item) for item in items])
    expected = {item.source: g.text for item, g in zip(items, generations, strict=True)}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    out = tmp_path / "two.jsonl"
    argv = ["caption", *photos, "--model", str(path), "--profile", "inkscope-2b", "--engine", "vllm",
            "--devices", "cpu,cpu", "--engine-option", "enforce_eager=true", "--engine-option", "max_model_len=4096",
            "--engine-option", "dtype=float32", "--max-new-tokens", str(N), "--batch-size", "3", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["source"]: r["raw"] for r in rows} == expected
    assert len(set(expected.values())) > 1


@pytest.mark.vllm
def test_device_option_on_this_build(engines, tiny_model, coco_photos):
    """`--device` naming this build's device works; the other one is a one-line error before any loading."""
    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.errors import ConfigError

    path = tiny_model("qwen2_vl")
    engine = engines("vllm", path, "inkscope-2b", {**QWEN2_VL, "device": "auto"})
    here = engine.platform
    other = "cuda" if here == "cpu" else "cpu"
    with pytest.raises(ConfigError) as info:
        VLLMEngine(str(path), get_profile("inkscope-2b"), {**QWEN2_VL, "device": other})
    assert "\n" not in str(info.value)
    # with it, options that reach vLLM's own config (the data-parallel vision encoder matters with tensor parallel)
    engine = engines("vllm", path, "inkscope-2b", {**QWEN2_VL, "device": here, "mm_encoder_tp_mode": "data"})
    config = engine.llm.llm_engine.vllm_config.model_config
    assert config.multimodal_config.mm_encoder_tp_mode == "data"
    _, _, requests = _requests(path, "inkscope-2b", coco_photos, n=2)
    assert all(g.error is None and g.completion_tokens == N for g in engine.generate(requests))


@pytest.mark.vllm
def test_qwen2_vl_greedy_equals_transformers_engine(engines, tiny_model, coco_photos):
    _greedy_equal(engines, tiny_model, coco_photos, "qwen2_vl", QWEN2_VL)


@pytest.mark.vllm
def test_chat_rendering_equals_processor_rendering(engines, tiny_model, coco_photos):
    """vLLM's own LLM.chat path (used for checkpoints without a processor) gives the same tokens."""
    path = tiny_model("qwen2_vl")
    _, _, requests = _requests(path, "inkscope-2b", coco_photos, n=3)
    engine = engines("vllm", path, "inkscope-2b", QWEN2_VL)
    by_processor = engine.generate(requests)
    engine.rendering = "chat"
    try:
        by_chat = engine.generate(requests)
    finally:
        engine.rendering = "processor"
    for a, b in zip(by_processor, by_chat, strict=True):
        assert b.error is None
        assert (a.text, a.prompt_tokens, a.completion_tokens) == (b.text, b.prompt_tokens, b.completion_tokens)


@pytest.mark.vllm
def test_prefix_caching_reuses_the_shared_prompt_and_limits_hold_per_item(engines, tiny_model, coco_photos):
    """Prefix caching is on (hits on the shared system prompt); an input over limit_mm_per_prompt fails alone."""
    from PIL import Image

    path = tiny_model("qwen2_vl")
    family = get_family("qwen2_vl")
    images = [Image.open(p).convert("RGB") for p in _photos(coco_photos, 3)]
    system = "You are a careful captioner. " * 60  # a long shared prefix: several KV-cache blocks
    build = family.build_request
    one = [
        build(f"i{k}", prompt="Describe.", system=system, decoding=Decoding(max_new_tokens=4), images=[im])
        for k, im in enumerate(images)
    ]
    two = build("two", prompt="Describe.", system=system, decoding=Decoding(max_new_tokens=4), images=images[:2])
    engine = engines("vllm", path, "inkscope-2b", QWEN2_VL)
    assert engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    engine.generate(one[:1])
    before = _counter(engine, "prefix_cache_hits")
    out = engine.generate([one[1], two, one[2]])
    hits = _counter(engine, "prefix_cache_hits") - before
    assert hits >= 2 * 200, f"only {hits} prompt tokens came from the prefix cache"
    assert out[0].error is None and out[2].error is None and out[0].completion_tokens == 4
    assert out[1].finish_reason == "error" and "image" in out[1].error  # 2 images > the limit of 1


@pytest.mark.vllm
def test_video_equals_transformers_engine(engines, tiny_model, coco_photos):
    """Inkscope's video input: frames prepared by the family, given to vLLM as one (T, H, W, 3) array."""
    from PIL import Image

    path = tiny_model("qwen2_vl")
    frames = [Image.open(p).convert("RGB").resize((320, 240)) for p in _photos(coco_photos, 4)]
    request = get_family("qwen2_vl").build_request(
        "v", prompt="Describe this video.", system=None, decoding=Decoding(max_new_tokens=N), videos=[frames]
    )
    ref = engines("transformers", path, "inkscope-2b", HF).generate([request])[0]
    got = engines("vllm", path, "inkscope-2b", QWEN2_VL).generate([request])[0]
    assert got.error is None and got.text == ref.text
    assert (got.prompt_tokens, got.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)
    assert ref.prompt_tokens > 60  # the frames are in the prompt as video tokens


def _counter(engine, name: str) -> float:
    return sum(getattr(m, "value", 0) for m in engine.llm.get_metrics() if m.name.endswith(name))


def _bounded_caption_tool():
    """emit_caption_schema with tight size bounds: any output closes well within the token budget."""
    import copy

    from capmill.schema import EMIT_CAPTION_TOOL

    tool = copy.deepcopy(EMIT_CAPTION_TOOL)
    params = tool["function"]["parameters"]
    subject = params["$defs"]["SubjectValue"]["properties"]
    subject["name"]["maxLength"] = 8
    subject["attributes"].update(maxItems=2, items={"type": "string", "maxLength": 6})
    params["properties"]["subjects"]["maxItems"] = 2
    params["properties"]["actions"].update(maxItems=1, items={"type": "string", "maxLength": 10})
    return tool


BOUNDED_SCHEMA = {
    "type": "object",
    "properties": {
        "setting": {"enum": ["indoor", "outdoor", "unknown"]},
        "objects": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 10}},
    },
    "required": ["setting", "objects"],
}


def _structured_equal(engines, tiny_model, coco_photos, arch, profile, constraint, options):
    """Constrained greedy decoding: same grammar (llguidance in both engines), same tokens."""
    path = tiny_model(arch)
    _, _, requests = _requests(path, profile, coco_photos, n=3, max_new_tokens=160, do_sample=False)
    for request in requests:
        request.constraint = constraint
    ref = engines("transformers", path, profile, HF).generate(requests)
    got = engines("vllm", path, profile, options).generate(requests)
    for r, g in zip(ref, got, strict=True):
        assert g.error is None and g.text == r.text and g.completion_tokens == r.completion_tokens
        assert g.finish_reason == "stop"  # the grammar closed; nothing was cut by the budget
    return got


@pytest.mark.vllm
def test_json_schema_output_equals_transformers_and_validates(engines, tiny_model, coco_photos):
    import json

    got = _structured_equal(
        engines, tiny_model, coco_photos, "qwen2_vl", "inkscope-2b", {"json_schema": BOUNDED_SCHEMA}, QWEN2_VL
    )
    for g in got:
        value = json.loads(g.text)
        assert value["setting"] in ("indoor", "outdoor", "unknown") and len(value["objects"]) <= 3


# ---- Qwen2.5-VL (CapRL-3B) ----
@pytest.mark.vllm
def test_qwen2_5_vl_greedy_equals_transformers_engine(engines, tiny_model, coco_photos):
    _greedy_equal(engines, tiny_model, coco_photos, "qwen2_5_vl", VLLM_OPTIONS)


@pytest.mark.vllm
def test_tool_call_output_equals_transformers_and_parses(engines, tiny_model, coco_photos):
    from capmill.schema import parse_tool_call

    constraint = {"tool_call": _bounded_caption_tool()}
    got = _structured_equal(engines, tiny_model, coco_photos, "qwen2_5_vl", "caprl-3b", constraint, VLLM_OPTIONS)
    for g in got:
        parsed = parse_tool_call(g.text)
        assert parsed.caption is not None, parsed.errors
        assert g.text.startswith("<tool_call>") and g.text.endswith("</tool_call>")


# ---- InternVL 3.5 (CapRL-InternVL) ----
@pytest.mark.vllm
def test_internvl_greedy_equals_transformers_engine(engines, tiny_model, coco_photos):
    _greedy_equal(engines, tiny_model, coco_photos, "internvl", VLLM_OPTIONS)


# ---- Qwen3.5 (json-captioner) ----
@pytest.mark.vllm
def test_json_captioner_on_vllm_differs_from_transformers_only_at_bf16_ties(engines, tiny_model, coco_photos):
    """Qwen3.5 runs on vLLM's CPU backend in bfloat16 only, where the tiny model's top logits often tie exactly.

    Both engines run bfloat16, with the profile's scaffold (system prompt + tools) and enable_thinking=False.
    Wherever the generated tokens part, the transformers engine's own top two logits are within one bfloat16
    step of each other (a tie its argmax breaks one way and vLLM's kernels the other); before that point every
    token is equal, and outputs with no such tie are equal throughout.
    """
    import torch

    path = tiny_model("qwen3_5", **QWEN3_5_SIZES)
    texts = ["A man riding a horse on a beach.", "Two cats sleeping on a red sofa."]
    requests, captioners = [], []
    for mode, inputs in (("text", texts), ("structured", _photos(coco_photos, 2))):
        cap = Captioner(
            model=str(path), profile="json-captioner", mode=mode, scaffold=SCAFFOLD, decoding={"max_new_tokens": N}
        )
        items = [cap.to_item(x, i) for i, x in enumerate(inputs)]
        requests += [cap.prepare(item) for item in items]
        captioners += [(cap, item) for item in items]
    assert all(r.tools and r.chat_kwargs == {"enable_thinking": False} for r in requests)
    hf = engines("transformers", path, "json-captioner", {**HF, "dtype": "bfloat16"})
    reference = []
    for request in requests:
        inputs = cap.family.encode(hf.processor, [request])
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.inference_mode():
            out = hf.model.generate(
                **inputs, max_new_tokens=N, do_sample=False, output_scores=True, return_dict_in_generate=True
            )
        reference.append(
            (out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [s[0].float() for s in out.scores])
        )
    engine = engines("vllm", path, "json-captioner", QWEN3_5_OPTIONS)
    got = engine.token_ids(requests)
    equal = 0
    for (ref_ids, scores), ids in zip(reference, got, strict=True):
        assert len(ids) == len(ref_ids) == N
        d = first_difference(ref_ids, ids)
        if d is None:
            equal += 1
            continue
        logits = scores[d]
        top = float(logits.max())
        gap = top - float(logits[ids[d]])
        assert gap <= bf16_ulp(top), f"step {d}: vLLM took a token {gap} below the top logit {top}: not a bf16 tie"
    assert equal >= 1, "no output agreed throughout"
    # the profile end to end: records from vLLM generations, prompt with the scaffold's tool
    generations = engine.generate(requests)
    for (cap, item), request, g in zip(captioners, requests, generations, strict=True):
        record = cap.finish(item, request, g)
        assert record.status in ("ok", "repaired", "invalid")  # random weights rarely write a tool call
        assert record.tokens["completion"] == N and record.tokens["prompt"] > 500
    assert "emit_caption_schema" in cap.render_prompt(captioners[-1][1])
