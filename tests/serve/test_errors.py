"""Every kind of bad request gets a clear 4xx (never a 500), overload a 503 with Retry-After, slowness a 504."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import http.server as http_server
import io
import threading

import httpx
import pytest
from openai import BadRequestError, OpenAI
from serve_helpers import SERVE_PROFILE, data_uri, serve

CHAT = "/v1/chat/completions"


def chat_body(*parts, **extra) -> dict:  # noqa: ANN002, ANN003
    content = list(parts) or [{"type": "text", "text": "Describe."}]
    return {"model": SERVE_PROFILE, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def expect(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert error["type"] and error["message"]
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error["message"])
    return error


@pytest.fixture(scope="module")
def http(server):  # noqa: ANN001
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# ---------------------------------------------------------------- size caps (413)


def test_body_over_the_cap_by_content_length(http):  # noqa: ANN001
    expect(
        http.post(CHAT, content=b"x" * (2 * 1024 * 1024 + 1), headers={"content-type": "application/json"}),
        413,
        "exceeds",
    )


def test_body_over_the_cap_without_content_length(http):  # noqa: ANN001
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MB of JSON whitespace, sent chunked

    expect(http.post(CHAT, content=chunks(), headers={"content-type": "application/json"}), 413, "exceeds")


def test_image_over_the_byte_cap(http):  # noqa: ANN001
    big = b"\xff\xd8" + bytes(1024 * 1024 + 10)
    expect(http.post(CHAT, json=chat_body(image_part(data_uri(big)))), 413, "exceeds")
    files = {"file": ("big.jpg", big, "image/jpeg")}
    expect(http.post("/v1/captions", files=files), 413, "exceeds")


def test_image_over_the_pixel_cap(http):  # noqa: ANN001
    error = expect(http.post(CHAT, json=chat_body(image_part(data_uri(png(2100, 2000), "image/png")))), 413, "pixels")
    assert "2100x2000" in error["message"]


# ---------------------------------------------------------------- bad content (400 saying what is wrong)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (chat_body(image_part("data:image/png;base64,%%%not-base64%%%")), ["bad base64", "image_url"]),
        (chat_body(image_part("data:image/png;base64,")), ["empty image"]),
        (chat_body(image_part("data:text/plain;base64,aGVsbG8=")), ["unsupported media type", "text/plain"]),
        (chat_body(image_part("data:image/png,rawbytes")), ["base64-encoded"]),
        (chat_body(image_part("ftp://example.com/a.png")), ["unsupported url scheme", "ftp"]),
        (chat_body(image_part("http://127.0.0.1:9/a.png")), ["non-public address", "127.0.0.1"]),
        (chat_body(image_part("http://169.254.169.254/latest/meta-data")), ["non-public address"]),
        (chat_body(image_part("http://[::1]/a.png")), ["non-public address"]),
        (chat_body(image_part(data_uri(b"this is not an image at all"))), ["not an image"]),
        (chat_body({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}), ["input_audio"]),
        (chat_body(n=2), ["n:"]),
        (chat_body(max_tokens=100_000), ["max_tokens", "limit of 64"]),
        (chat_body(temperature=-1), ["temperature"]),
        (chat_body(stream="sometimes"), ["stream"]),
        ({"model": SERVE_PROFILE}, ["messages", "required"]),
        ({"model": SERVE_PROFILE, "messages": []}, ["messages"]),
        ({"model": SERVE_PROFILE, "messages": [{"role": "system", "content": "x"}]}, ["user message"]),
        ({"model": SERVE_PROFILE, "messages": [{"role": "tool", "content": "x"}]}, ["role"]),
        (
            {"model": SERVE_PROFILE, "messages": [{"role": "system", "content": [image_part(data_uri(b"x"))]}]},
            ["only accepted in user messages"],
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_chat_bad_content(http, body, words):  # noqa: ANN001
    expect(http.post(CHAT, json=body), 400, *words)


def test_corrupt_and_truncated_images(http, photo_bytes):  # noqa: ANN001
    truncated = photo_bytes[: len(photo_bytes) // 3]
    expect(http.post(CHAT, json=chat_body(image_part(data_uri(truncated)))), 400, "truncated image")
    expect(http.post("/v1/captions", files={"file": ("t.jpg", truncated)}), 400, "t.jpg", "truncated image")
    garbage = photo_bytes[:200] + bytes(range(256)) * 40
    expect(http.post("/v1/captions", files={"file": ("g.jpg", garbage)}), 400, "g.jpg", "image")
    expect(http.post("/v1/captions", files={"file": ("e.jpg", b"")}), 400, "empty")


def test_malformed_json(http):  # noqa: ANN001
    expect(http.post(CHAT, content=b'{"model": ', headers={"content-type": "application/json"}), 400, "json")
    expect(http.post("/v1/captions", content=b"{nope", headers={"content-type": "application/json"}), 400, "json")


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"json": {"image": "###"}}, 400, ["bad base64"]),
        ({"json": {"image": "aGk=", "text": "both"}}, 400, ["exactly one"]),
        ({"json": {}}, 400, ["exactly one"]),
        ({"json": {"image": "aGk=", "unexpected": 1}}, 400, ["unexpected"]),
        ({"json": {"text": "a dog on a sofa"}}, 400, ["does not caption text"]),
        ({"json": {"image": "aGk=", "mode": "structured"}}, 400, ["mode 'structured' is not offered"]),
        ({"json": {"image": "aGk=", "model": "nope"}}, 404, ["unknown model"]),
        ({"data": {"mode": "caption"}}, 400, ["file"]),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, ["text/plain"]),
    ],
)
def test_captions_bad_requests(http, kwargs, status, words):  # noqa: ANN001
    if "data" in kwargs:  # a multipart form without the file field
        kwargs = {"files": {"mode": (None, "caption")}}
    expect(http.post("/v1/captions", **kwargs), status, *words)


def test_unknown_route_and_method(http):  # noqa: ANN001
    expect(http.get("/v1/nothing"), 404, "no route")
    expect(http.get(CHAT), 405)


def test_openai_client_sees_the_message(server):  # noqa: ANN001
    client = OpenAI(api_key="EMPTY", base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(BadRequestError, match="bad base64"):
        client.chat.completions.create(
            model=SERVE_PROFILE,
            messages=[{"role": "user", "content": [image_part("data:image/png;base64,@@@")]}],
        )


# ---------------------------------------------------------------- URL images


class _ImageHandler(http_server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.end_headers()
            return
        if self.path != "/photo.jpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def image_host(photo_bytes):  # noqa: ANN001
    _ImageHandler.payload = photo_bytes
    httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_images(captioner, server, image_host, photo_bytes):  # noqa: ANN001
    # Disabled unless the flag says so.
    with serve(captioner) as plain:
        r = httpx.post(f"{plain.url}{CHAT}", json=chat_body(image_part(f"{image_host}/photo.jpg")), timeout=60)
        expect(r, 400, "disabled", "--allow-url-images")
    # Allowed, but never to loopback (the main server).
    r = httpx.post(f"{server.url}{CHAT}", json=chat_body(image_part(f"{image_host}/photo.jpg")), timeout=60)
    expect(r, 400, "non-public address")
    # Allowed to private addresses when told: fetched for real, redirects followed, 404s reported.
    with serve(captioner, allow_url_images=True, allow_private_urls=True) as trusting:
        by_url = httpx.post(f"{trusting.url}{CHAT}", json=chat_body(image_part(f"{image_host}/redirect")), timeout=60)
        assert by_url.status_code == 200, by_url.text
        inline = httpx.post(f"{trusting.url}{CHAT}", json=chat_body(image_part(data_uri(photo_bytes))), timeout=60)
        assert by_url.json()["choices"][0]["message"]["content"] == inline.json()["choices"][0]["message"]["content"]
        missing = httpx.post(f"{trusting.url}{CHAT}", json=chat_body(image_part(f"{image_host}/gone.jpg")), timeout=60)
        expect(missing, 400, "HTTP 404")


# ---------------------------------------------------------------- overload and timeouts


def test_full_queue_answers_503_with_retry_after(captioner, photo_bytes):  # noqa: ANN001
    body = chat_body(image_part(data_uri(photo_bytes)), max_tokens=16)
    with serve(captioner, max_batch=1, max_wait_ms=0, max_queue=1) as tight:
        with cf.ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: httpx.post(f"{tight.url}{CHAT}", json=body, timeout=60), range(12)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1
        expect(busy, 503, "queue full")
        metrics = httpx.get(f"{tight.url}/metrics").text
        assert 'capmill_rejected_total{reason="queue_full"}' in metrics


def test_timeout_answers_504(captioner, photo_bytes):  # noqa: ANN001
    body = chat_body(image_part(data_uri(photo_bytes)), max_tokens=16)
    with serve(captioner, request_timeout_s=0.001) as slow:
        expect(httpx.post(f"{slow.url}{CHAT}", json=body, timeout=60), 504, "did not finish within")
        streamed = httpx.post(f"{slow.url}{CHAT}", json={**body, "stream": True}, timeout=60)
        assert streamed.status_code == 200  # the stream had started; the error arrives as an event
        assert '"timeout_error"' in streamed.text and streamed.text.rstrip().endswith("data: [DONE]")


def test_no_server_error_was_counted(server):  # noqa: ANN001
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'status="5' not in metrics.replace('status="503"', "").replace('status="504"', "")


def test_base64_helpers_accept_url_safe_and_whitespace():
    from capmill.serve.limits import b64decode

    data = bytes(range(256))
    wrapped = base64.b64encode(data).decode()
    wrapped = "\n".join(wrapped[i : i + 60] for i in range(0, len(wrapped), 60))
    assert b64decode(wrapped, param="image", max_bytes=1000) == data
    assert b64decode(base64.urlsafe_b64encode(data).decode().rstrip("="), param="image", max_bytes=1000) == data
