"""Token streaming, per-row random generators and cancelled rows, on the real tiny Qwen2-VL model.

The engine-level tests drive the transformers engine directly with row controls attached (no HTTP), so the
order of events is exact; the HTTP tests check the same through the server's SSE stream.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from serve_helpers import SERVE_PROFILE, data_uri

from capmill.engines import streaming
from capmill.records import Decoding, Item

CHAT = "/v1/chat/completions"
COCO = Path(__file__).parents[1] / "data" / "coco"
SAME_SIZE = ("000000229997.jpg", "000000397133.jpg")  # both 640x427: one token length, no padding
OTHER_SIZES = ("000000165518.jpg", "000000434204.jpg")  # 612x612 and 500x333: padded beside the above


def requests_for(captioner, names, decoding: Decoding):  # noqa: ANN001
    out = []
    for name in names:
        data = (COCO / name).read_bytes()
        request = captioner.prepare(Item(id=name, source=name, data=data), None)
        out.append(replace(request, decoding=decoding))
    return out


def test_every_row_of_a_batch_streams_and_ends_as_it_would_whole(captioner):  # noqa: ANN001
    greedy = Decoding(max_new_tokens=24)
    names = SAME_SIZE + OTHER_SIZES
    whole = captioner.generate(requests_for(captioner, names, greedy))
    batch = requests_for(captioner, names, greedy)
    events: dict[int, list[tuple[str, int]]] = {i: [] for i in range(len(batch))}
    for i, request in enumerate(batch):
        streaming.attach(request, streaming.RowControl(lambda text, n, i=i: events[i].append((text, n))))
    try:
        streamed = captioner.generate(batch)
    finally:
        for request in batch:
            streaming.detach(request)
    for i, generation in enumerate(streamed):
        assert generation.text == whole[i].text
        sent = "".join(text for text, _ in events[i])
        assert sent == generation.text.rstrip("\ufffd").rstrip()  # all but what could still change, as it came
        counts = [n for _, n in events[i]]
        assert len(counts) >= 3, events[i]
        assert counts == sorted(counts) and counts[0] <= 3  # the first text went out after a token or three
        assert counts[0] < generation.completion_tokens // 2  # ... well before the last token


def test_a_cancelled_row_stops_and_its_batch_mates_do_not_notice(captioner):  # noqa: ANN001
    greedy = Decoding(max_new_tokens=48)
    alone = captioner.generate(requests_for(captioner, SAME_SIZE[1:], greedy))[0]
    batch = requests_for(captioner, SAME_SIZE, greedy)
    left_at: list[int] = []

    def leave(text: str, tokens: int) -> None:  # leaves at its first text
        left_at.append(tokens)
        control.cancelled = True

    control = streaming.RowControl(leave)
    streaming.attach(batch[0], control)
    try:
        gone, mate = captioner.generate(batch)
    finally:
        streaming.detach(batch[0])
    assert len(left_at) == 1 and left_at[0] <= 3  # nothing more is decoded for it once it has gone
    assert gone.completion_tokens <= left_at[0] + 2 < greedy.max_new_tokens  # it stopped within a step or two
    assert mate.text == alone.text and mate.completion_tokens == alone.completion_tokens


@pytest.mark.parametrize("mates", [SAME_SIZE[1:], OTHER_SIZES], ids=["same-length", "padded"])
def test_a_seeded_request_samples_the_same_alone_or_beside_others(captioner, mates):  # noqa: ANN001
    seeded = Decoding(max_new_tokens=24, do_sample=True, temperature=1.0, seed=7)
    alone = captioner.generate(requests_for(captioner, SAME_SIZE[:1], seeded))[0]
    again = captioner.generate(requests_for(captioner, SAME_SIZE[:1], seeded))[0]
    beside = captioner.generate(requests_for(captioner, SAME_SIZE[:1] + mates, seeded))
    assert alone.text == again.text == beside[0].text
    greedy = captioner.generate(requests_for(captioner, SAME_SIZE[:1], Decoding(max_new_tokens=24)))[0]
    assert alone.text != greedy.text  # it did sample
    other_seed = captioner.generate(requests_for(captioner, SAME_SIZE[:1], seeded.merged(seed=8)))[0]
    assert other_seed.text != alone.text


# ---------------------------------------------------------------- over HTTP


def _chat(name: str, **extra) -> dict:  # noqa: ANN003
    image = {"type": "image_url", "image_url": {"url": data_uri((COCO / name).read_bytes())}}
    body = {"model": SERVE_PROFILE, "messages": [{"role": "user", "content": [image]}], "max_tokens": 16}
    return {**body, "temperature": 0, **extra}


def _events(response: httpx.Response) -> list[dict]:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def _batches(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^capmill_batch_size_count (\S+)$", text, re.M).group(1))


def test_sse_streams_tokens_for_concurrent_clients(server):  # noqa: ANN001
    names = SAME_SIZE + OTHER_SIZES
    whole = {}
    for name in names:
        r = httpx.post(f"{server.url}{CHAT}", json=_chat(name), timeout=60)
        whole[name] = r.json()
    server.idle()
    before = _batches(server.url)

    def stream(name: str) -> list[dict]:
        with httpx.stream("POST", f"{server.url}{CHAT}", json=_chat(name, stream=True), timeout=60) as response:
            assert response.status_code == 200
            return _events(response)

    with cf.ThreadPoolExecutor(len(names)) as pool:
        streams = dict(zip(names, pool.map(stream, names), strict=True))
    assert _batches(server.url) - before < len(names)  # they shared engine batches
    for name, events in streams.items():
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        content = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
        text = "".join(e["choices"][0]["delta"]["content"] for e in content)
        assert text == whole[name]["choices"][0]["message"]["content"]
        tokens = [e["capmill"]["tokens"] for e in content]
        total = whole[name]["usage"]["completion_tokens"]
        assert len(content) >= 3 and tokens[0] < total // 2 and tokens == sorted(tokens)
        assert events[-1]["choices"][0]["finish_reason"] == whole[name]["choices"][0]["finish_reason"]


def test_a_streaming_client_that_leaves_is_cancelled(server):  # noqa: ANN001
    def cancelled() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        found = re.search(r'^capmill_cancelled_total\{reason="disconnect"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    before = cancelled()
    mate = cf.ThreadPoolExecutor(1).submit(
        lambda: httpx.post(f"{server.url}{CHAT}", json=_chat(SAME_SIZE[1], max_tokens=48), timeout=60)
    )
    with httpx.stream(
        "POST", f"{server.url}{CHAT}", json=_chat(SAME_SIZE[0], stream=True, max_tokens=48), timeout=60
    ) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first text: leave now
    deadline = time.monotonic() + 30
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    answer = mate.result()
    assert answer.status_code == 200
    alone = httpx.post(f"{server.url}{CHAT}", json=_chat(SAME_SIZE[1], max_tokens=48), timeout=60)
    assert answer.json()["choices"][0]["message"]["content"] == alone.json()["choices"][0]["message"]["content"]


def test_a_waiting_client_that_leaves_is_cancelled(server):  # noqa: ANN001
    """Not streaming: the server notices the closed connection while the request waits for its batch."""
    import socket

    def cancelled() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        found = re.search(r'^capmill_cancelled_total\{reason="disconnect"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    server.idle()
    before = cancelled()
    body = json.dumps(_chat(SAME_SIZE[0], max_tokens=64)).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while not server.app.state.service.batcher._in_flight and time.monotonic() < deadline:
            time.sleep(0.005)  # leave once its batch is running
    deadline = time.monotonic() + 30
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    server.idle()
