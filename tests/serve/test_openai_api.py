"""The official `openai` client and plain HTTP against a running server with the real tiny Qwen2-VL model."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import re

import httpx
import pytest
from openai import NotFoundError, OpenAI
from serve_helpers import SERVE_PROFILE, data_uri


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001
    return OpenAI(api_key="EMPTY", base_url=f"{server.url}/v1", max_retries=0, timeout=60)


def caprl_messages(image: bytes, text: str = "Generate a detailed caption for this image.") -> list[dict]:
    """The message shape from the CapRL card (`data:image;base64,...`, system prompt, image then text)."""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image;base64,{base64.b64encode(image).decode()}"}},
                {"type": "text", "text": text},
            ],
        },
    ]


def test_whole_response_matches_the_captioner(client, server, captioner, photos):  # noqa: ANN001
    image = photos[1].read_bytes()
    response = client.chat.completions.create(
        model="caprl",
        messages=caprl_messages(image),
        max_tokens=12,
        temperature=0,
        extra_body={"repetition_penalty": 1.0},
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == "caprl"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 12 and response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    # The same request through the Captioner directly gives the same greedy text: the server adds nothing.
    from capmill.records import Item

    request = captioner.prepare(Item(id="x", source="x", data=image), "caption")
    request.messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Generate a detailed caption for this image."}],
        },
    ]
    request.decoding = request.decoding.merged(max_new_tokens=12)
    server.idle()
    assert captioner.generate([request])[0].text == choice.message.content


def test_output_depends_on_the_image(client, photos):  # noqa: ANN001
    texts = {
        client.chat.completions.create(model=SERVE_PROFILE, messages=caprl_messages(p.read_bytes()), max_tokens=8)
        .choices[0]
        .message.content
        for p in photos[:3]
    }
    assert len(texts) > 1


def test_streaming_gives_the_same_text(client, photos):  # noqa: ANN001
    messages = caprl_messages(photos[2].read_bytes())
    whole = client.chat.completions.create(model=SERVE_PROFILE, messages=messages, max_tokens=10).choices[0]
    stream = client.chat.completions.create(
        model=SERVE_PROFILE, messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= len(text.split()) and all(len(p.split()) <= 1 for p in pieces)  # word-sized deltas
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_sse_wire_format(server, photo_bytes):  # noqa: ANN001
    body = {"model": SERVE_PROFILE, "messages": caprl_messages(photo_bytes), "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_text_only_chat(client):  # noqa: ANN001
    response = client.chat.completions.create(
        model=SERVE_PROFILE, messages=[{"role": "user", "content": "Say something."}], max_tokens=5
    )
    assert response.choices[0].message.content is not None


def test_models_and_unknown_model(client):  # noqa: ANN001
    ids = [m.id for m in client.models.list().data]
    assert ids == [SERVE_PROFILE, "caprl"]
    with pytest.raises(NotFoundError, match="unknown model 'gpt-4o'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_captions_multipart_and_json(server, photos):  # noqa: ANN001
    image = photos[3].read_bytes()
    upload = httpx.post(f"{server.url}/v1/captions", files={"file": (photos[3].name, image, "image/jpeg")}, timeout=60)
    assert upload.status_code == 200, upload.text
    record = upload.json()
    assert record["status"] == "ok" and record["caption"] and record["raw"]
    assert record["source"] == photos[3].name and record["profile"] == SERVE_PROFILE
    assert record["content_hash"] == __import__("hashlib").sha256(image).hexdigest()

    as_json = httpx.post(
        f"{server.url}/v1/captions", json={"image": base64.b64encode(image).decode(), "id": "mine"}, timeout=60
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["id"] == "mine"
    assert as_json.json()["caption"] == record["caption"]  # greedy: same image, same caption
    uri = httpx.post(f"{server.url}/v1/captions", json={"image": data_uri(image)}, timeout=60)
    assert uri.json()["caption"] == record["caption"]


def test_concurrent_requests_share_engine_batches(server, photos):  # noqa: ANN001
    def batch_sizes() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics").text
        total = float(re.search(r"^capmill_batch_size_sum (\S+)$", text, re.M).group(1))
        count = float(re.search(r"^capmill_batch_size_count (\S+)$", text, re.M).group(1))
        return total, count

    server.idle()
    before = batch_sizes()

    def one(i: int) -> dict:
        data = photos[i % len(photos)].read_bytes()
        r = httpx.post(f"{server.url}/v1/captions", files={"file": (f"{i}.jpg", data)}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    with cf.ThreadPoolExecutor(8) as pool:
        records = list(pool.map(one, range(8)))
    after = batch_sizes()
    requests, batches = after[0] - before[0], after[1] - before[1]
    assert requests == 8 and batches < 8, f"{requests} requests ran in {batches} engine batches"
    sizes = {r["timings"].get("batch_size") for r in records}
    assert max(sizes) > 1
    # Batched or not, each image gets the caption it gets alone (greedy decoding).
    alone = one(0)
    assert alone["caption"] == records[0]["caption"]


def test_healthz_and_metrics(server):  # noqa: ANN001
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["model"] == SERVE_PROFILE
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("capmill_requests_total", "capmill_request_seconds_bucket", "capmill_batch_size_bucket",
                 "capmill_queue_depth", "capmill_tokens_total", "capmill_in_flight", "capmill_batch_seconds_bucket",
                 "capmill_time_to_first_token_seconds_bucket", "capmill_streams_open",
                 "process_resident_memory_bytes", "process_cpu_seconds_total", "python_gc_collections_total"):  # fmt: skip
        assert name in text
    assert re.search(r'capmill_requests_total\{method="POST",route="/v1/chat/completions",status="200"\} [1-9]', text)
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}  # the official parser reads it
    tokens = {s.labels["kind"]: s.value for s in families["capmill_tokens"].samples if s.name.endswith("_total")}
    assert tokens["prompt"] > 0 and tokens["completion"] > 0


def test_capmill_openai_engine_against_capmill_serve(server, captioner, tiny_qwen2_vl, photos):  # noqa: ANN001
    """capmill's own OpenAI-compatible engine, pointed at this server, captions as the local engine does."""
    from capmill.captioner import Captioner

    remote = Captioner(
        model=str(tiny_qwen2_vl),
        profile=SERVE_PROFILE,
        engine="openai",
        decoding={"max_new_tokens": 16},
        engine_options={"base_url": f"{server.url}/v1", "served_model": SERVE_PROFILE, "max_retries": 0},
    )
    try:
        via_server = remote.caption([str(p) for p in photos[:2]])
    finally:
        remote.close()
    server.idle()
    local = captioner.caption([str(p) for p in photos[:2]])
    assert [r.status for r in via_server] == ["ok", "ok"], [r.error for r in via_server]
    assert [r.caption for r in via_server] == [r.caption for r in local]
