"""The JSON captioner served: structured captions from /v1/captions (constrained to the tool), text mode, and
OpenAI response_format, on the real tiny Qwen3.5 model with the scaffold stand-in; and the gallery showing them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from serve_helpers import data_uri, serve

STANDIN = Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl"


@pytest.fixture(scope="module")
def captioner_qwen3_5(tiny_model):  # noqa: ANN001
    import torch

    from capmill.captioner import Captioner

    torch.set_num_threads(1)
    cap = Captioner(
        model=str(tiny_model("qwen3_5")), profile="json-captioner", scaffold=STANDIN, decoding={"max_new_tokens": 96}
    )
    yield cap
    cap.close()


@pytest.fixture(scope="module")
def json_server(captioner_qwen3_5):  # noqa: ANN001
    with serve(captioner_qwen3_5, constrained=True, max_tokens_limit=96) as s:
        yield s


def test_structured_caption_of_an_image(json_server, photo_bytes):  # noqa: ANN001
    r = httpx.post(f"{json_server.url}/v1/captions", files={"file": ("p.jpg", photo_bytes)}, timeout=120)
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["mode"] == "structured" and record["profile"] == "json-captioner"
    # Held to the tool's grammar, even random weights write a call that parses into the schema.
    assert record["status"] in ("ok", "repaired"), record
    assert record["raw"].lstrip().startswith("<tool_call>")
    assert set(record["structured"]) >= {"subjects", "actions", "setting"}
    assert record["structured"]["setting"] in ("indoor", "outdoor", "unknown")


def test_text_mode_and_unconstrained(json_server, photo_bytes):  # noqa: ANN001
    text = httpx.post(f"{json_server.url}/v1/captions", json={"text": "A dog sleeps on a red sofa."}, timeout=120)
    assert text.status_code == 200, text.text
    assert text.json()["mode"] == "text" and text.json()["structured"] is not None
    free = httpx.post(
        f"{json_server.url}/v1/captions", files={"file": ("p.jpg", photo_bytes)}, data={"constrained": "false"}
    )
    assert free.status_code == 200 and free.json()["status"] in ("ok", "repaired", "invalid")


def test_response_format_json_schema(json_server, photo_bytes):  # noqa: ANN001
    from openai import OpenAI

    schema = {
        "type": "object",
        "properties": {"setting": {"enum": ["indoor", "outdoor"]}, "count": {"type": "integer"}},
        "required": ["setting", "count"],
    }
    client = OpenAI(api_key="EMPTY", base_url=f"{json_server.url}/v1", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="json-captioner",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(photo_bytes)}}]}],
        response_format={"type": "json_schema", "json_schema": {"name": "scene", "schema": schema}},
        max_tokens=48,
    )
    value = json.loads(reply.choices[0].message.content)
    assert value["setting"] in ("indoor", "outdoor") and isinstance(value["count"], int)


def test_vllm_structured_outputs_and_bad_constraints(json_server):  # noqa: ANN001
    def chat(**extra):  # noqa: ANN003, ANN202
        body = {"model": "json-captioner", "messages": [{"role": "user", "content": "Answer."}], "max_tokens": 8}
        return httpx.post(f"{json_server.url}/v1/chat/completions", json={**body, **extra}, timeout=120)

    grammar = chat(
        structured_outputs={"grammar": 'start: "yes" | "no"'}, chat_template_kwargs={"enable_thinking": False}
    )
    assert grammar.status_code == 200, grammar.text
    assert grammar.json()["choices"][0]["message"]["content"] in ("yes", "no")
    bad = chat(structured_outputs={"grammar": "start: ("})
    assert bad.status_code == 400 and "grammar" in bad.json()["error"]["message"]
    both = chat(structured_outputs={"grammar": 'start: "a"', "json": {"type": "object"}})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]
    no_schema = chat(response_format={"type": "json_schema"})
    assert no_schema.status_code == 400


def test_text_after_a_batch_of_images(json_server, captioner_qwen3_5, photo_bytes, photos):  # noqa: ANN001
    import concurrent.futures as cf

    with serve(captioner_qwen3_5, max_batch=2, max_wait_ms=5000) as paired:

        def upload(p):  # noqa: ANN001, ANN202
            return httpx.post(f"{paired.url}/v1/captions", files={"file": (p.name, p.read_bytes())}, timeout=120)

        with cf.ThreadPoolExecutor(2) as pool:
            images = list(pool.map(upload, photos[:2]))
        assert all(r.status_code == 200 for r in images)  # usually one batch of 2; the engine test pins that case
        text = httpx.post(f"{paired.url}/v1/captions", json={"text": "A dog on a sofa."}, timeout=120).json()
    assert text["status"] != "error", text["error"]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="/usr/bin/chromium is absent")
def test_gallery_shows_structured_json(json_server, photos, browser):  # noqa: ANN001
    from test_gallery_browser import shot

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(json_server.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#text-input", "Two horses walk along a beach.")
        page.click("#text-form button[type=submit]")
        page.wait_for_selector(
            "#upload-grid .card[data-status='ok'], #upload-grid .card[data-status='repaired']", timeout=120_000
        )
        page.set_input_files("#file-input", [str(p) for p in photos[:2]])
        page.wait_for_function(
            "() => { const c = [...document.querySelectorAll('#upload-grid .card')];"
            " return c.length === 3 && c.every(x => ['ok','repaired','invalid','error'].includes(x.dataset.status)); }",
            timeout=120_000,
        )
        for card in page.query_selector_all("#upload-grid .card"):
            assert card.get_attribute("data-status") in ("ok", "repaired"), card.query_selector(
                ".message"
            ).text_content()
            box = card.query_selector(".structured-box")
            assert box.is_visible()
            structured = json.loads(card.query_selector(".structured").text_content())
            assert "subjects" in structured
        page.click("#upload-grid .card .structured-box summary")
        shot(page, "gallery-structured")
    finally:
        page.close()
