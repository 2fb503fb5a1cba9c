"""The OpenAI-compatible engine against a real `capmill serve` (uvicorn on 127.0.0.1, the tiny Qwen2-VL model).

capmill serve is a second real server: its greedy captions must be the Captioner's own, its API key must be
sent from the environment, and its 503 + Retry-After when the queue is full must be retried until all succeed.
"""

from __future__ import annotations

import pytest

from capmill.captioner import Captioner
from capmill.engines.openai_engine import OpenAIEngine
from capmill.errors import ConfigError
from capmill.models.catalog import get_profile
from live_server import UvicornThread

PROFILE = "inkscope-2b"
N = 12


@pytest.fixture(scope="module")
def captioner(tiny_model):
    pytest.importorskip("fastapi")
    import torch

    torch.set_num_threads(2)
    cap = Captioner(model=str(tiny_model("qwen2_vl")), profile=PROFILE, decoding={"max_new_tokens": N})
    _ = cap.engine
    yield cap
    cap.close()


def _serve(captioner, **config):
    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig

    return UvicornThread(create_app(ServeConfig(served_model_names=[PROFILE], **config), captioner=captioner))


def _requests(captioner, coco_photos, n):
    return [captioner.prepare(captioner.to_item(str(p), i)) for i, p in enumerate(coco_photos[:n])]


def test_captions_through_capmill_serve_equal_the_captioner(captioner, coco_photos, monkeypatch):
    monkeypatch.setenv("CAPMILL_SERVE_TEST_KEY", "k-123")
    requests = _requests(captioner, coco_photos, 4)
    with _serve(captioner, api_key="k-123", max_batch=4, max_wait_ms=20) as server:
        options = {"base_url": server.url, "api_key_env": "CAPMILL_SERVE_TEST_KEY", "concurrency": 4}
        got = OpenAIEngine(PROFILE, get_profile(PROFILE), options).generate(requests)
        with pytest.raises(ConfigError, match="refused the API key"):
            OpenAIEngine(PROFILE, get_profile(PROFILE), {**options, "api_key_env": "CAPMILL_UNSET_VAR"}).generate(
                requests
            )
    direct = captioner.generate(requests)
    for g, d in zip(got, direct, strict=True):
        assert g.error is None, g.error
        assert g.text == d.text  # PNG data URIs carry the family's resized pixels exactly
        assert g.completion_tokens == d.completion_tokens == N
    assert len({d.text for d in direct}) > 1


def test_full_queue_503_is_retried_until_everything_succeeds(captioner, coco_photos):
    requests = _requests(captioner, coco_photos, 6)
    with _serve(captioner, max_batch=1, max_wait_ms=0, max_queue=1) as server:
        engine = OpenAIEngine(
            PROFILE, get_profile(PROFILE), {"base_url": server.url, "concurrency": 6, "backoff_max": 2.0}
        )
        got = engine.generate(requests)
    assert all(g.error is None and g.completion_tokens == N for g in got), [g.error for g in got]
    assert engine.stats["retries"] >= 1  # the server did refuse some at first: the retries carried them through
    direct = captioner.generate(requests)
    assert [g.text for g in got] == [d.text for d in direct]
