"""Limits on everything a client controls: each refused with a 4xx naming the limit, on a real server."""

from __future__ import annotations

import asyncio
import http.server as http_server
import json
import socket
import threading
import time

import httpx
import pytest
from serve_helpers import SERVE_PROFILE, data_uri, serve

CHAT = "/v1/chat/completions"


def chat_body(**extra) -> dict:  # noqa: ANN003
    return {"model": SERVE_PROFILE, "messages": [{"role": "user", "content": "Describe."}], "max_tokens": 2, **extra}


def expect(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    error = response.json()["error"]
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error["message"])
    return error


@pytest.fixture(scope="module")
def limited(captioner):  # noqa: ANN001
    with serve(
        captioner,
        max_stop_sequences=3,
        max_stop_chars=10,
        max_grammar_bytes=2000,
        grammar_cache_size=3,
        max_messages=4,
        max_text_chars=500,
        max_tokens_limit=32,
        max_images_per_request=2,
    ) as s:
        yield s


def test_stop_lists_are_bounded(limited):  # noqa: ANN001
    url = f"{limited.url}{CHAT}"
    expect(httpx.post(url, json=chat_body(stop=["a", "b", "c", "d"])), 400, "max_stop_sequences", "4 strings")
    expect(httpx.post(url, json=chat_body(stop="x" * 11)), 400, "max_stop_chars", "11 characters")
    assert httpx.post(url, json=chat_body(stop=["a", "b", "c"]), timeout=60).status_code == 200


def test_counts_and_sizes_are_bounded(limited, photo_bytes):  # noqa: ANN001
    url = f"{limited.url}{CHAT}"
    expect(httpx.post(url, json=chat_body(max_tokens=33)), 400, "max_tokens_limit")
    many = [{"role": "user", "content": "hi"}] * 5
    expect(httpx.post(url, json={**chat_body(), "messages": many}), 413, "max_messages")
    expect(
        httpx.post(url, json={**chat_body(), "messages": [{"role": "user", "content": "w " * 300}]}),
        413,
        "max_text_chars",
    )
    image = {"type": "image_url", "image_url": {"url": data_uri(photo_bytes)}}
    three = [{"role": "user", "content": [image, image, image]}]
    expect(httpx.post(url, json={**chat_body(), "messages": three}), 413, "max_images_per_request")


def _schema(n: int) -> dict:
    return {"type": "object", "properties": {f"field_{n}": {"type": "string"}}, "required": [f"field_{n}"]}


def test_grammars_are_size_capped_and_cached_within_a_bound(limited):  # noqa: ANN001
    url = f"{limited.url}{CHAT}"
    huge = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(200)}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": huge}}
    expect(httpx.post(url, json=chat_body(response_format=fmt)), 413, "max_grammar_bytes")
    expect(httpx.post(url, json=chat_body(structured_outputs={"grammar": "x" * 2001})), 413, "max_grammar_bytes")
    tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": huge}} for i in range(2)]
    expect(httpx.post(url, json=chat_body(tools=tools)), 413, "max_grammar_bytes")
    checker = limited.app.state.service.grammars
    for n in range(6):
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": _schema(n)}}
        r = httpx.post(url, json=chat_body(response_format=fmt, max_tokens=4), timeout=60)
        assert r.status_code == 200, r.text
        assert len(checker) <= 3  # least recently used schemas leave the cache
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    expect(httpx.post(url, json=chat_body(response_format=bad)), 400, "response_format")


def test_grammar_check_has_a_time_limit(captioner):  # noqa: ANN001
    # a schema whose check takes milliseconds (a one-field schema is checked in ~0.2 ms, which can beat the
    # event loop's own turn to the time limit); 17 KB, under the size cap
    item = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    slow = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "array", "items": item} for i in range(120)},
        "required": [f"field_{i}" for i in range(120)],
    }
    with serve(captioner, grammar_timeout_s=1e-6) as s:
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": slow}}
        error = expect(httpx.post(f"{s.url}{CHAT}", json=chat_body(response_format=fmt)), 400, "grammar_timeout_s")
        assert error["code"] == "grammar_too_complex"
        assert httpx.get(f"{s.url}/healthz").status_code == 200


def _slow_drip(url: str, declared: int, seconds: float) -> tuple[socket.socket, threading.Thread]:
    """A client that declares a body and sends one byte every 0.2 s for `seconds` (then keeps the socket open)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode())

    def drip() -> None:
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                sock.sendall(b" ")
                time.sleep(0.2)
        except OSError:
            pass  # the server closed the connection: what we are testing

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    return sock, thread


def _read_status(sock: socket.socket, timeout: float = 30) -> tuple[int, str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(v) for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:]) if k.lower() == b"content-length"), 0)  # fmt: skip
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return int(head.split()[1]), rest.decode(errors="replace")


def test_slow_drip_upload_gets_408_and_frees_its_slot(captioner):  # noqa: ANN001
    with serve(captioner, receive_timeout_s=1.0, max_inflight_per_client=1) as s:
        sock, drip = _slow_drip(s.url, 10_000, seconds=20)
        try:
            time.sleep(0.3)  # the dripping request holds this client's only slot
            expect(httpx.post(f"{s.url}{CHAT}", json=chat_body()), 429, "max_inflight_per_client")
            status, body = _read_status(sock)
            assert status == 408, body
            assert "receive_timeout_s" in json.loads(body)["error"]["message"]
        finally:
            sock.close()
        assert httpx.post(f"{s.url}{CHAT}", json=chat_body(), timeout=60).status_code == 200


# ---------------------------------------------------------------- URL images


class _Images(http_server.BaseHTTPRequestHandler):
    payload = b""
    hosts: list[str] = []

    def do_GET(self):  # noqa: N802
        type(self).hosts.append(self.headers.get("Host", ""))
        if self.path == "/drip.jpg":  # a slow sender: a byte a second, for ever
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            try:
                for byte in self.payload:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                return
            return
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "http://10.255.255.1/photo.jpg")  # a private address, on the 2nd hop
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def image_port(photo_bytes):  # noqa: ANN001
    _Images.payload = photo_bytes
    httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _image_chat(url: str) -> dict:
    return chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])


def test_local_name_is_refused_unless_allowed(captioner, image_port):  # noqa: ANN001
    url = f"http://localhost:{image_port}/photo.jpg"
    with serve(captioner, allow_url_images=True) as open_server:
        expect(httpx.post(f"{open_server.url}{CHAT}", json=_image_chat(url), timeout=60), 400, "non-public")
    with serve(captioner, allow_url_images=True, url_allow_hosts=["localhost"]) as allowing:
        ok = httpx.post(f"{allowing.url}{CHAT}", json=_image_chat(url), timeout=60)
        assert ok.status_code == 200, ok.text
        other = f"http://127.0.0.1:{image_port}/photo.jpg"  # same machine, but not a name on the list
        expect(httpx.post(f"{allowing.url}{CHAT}", json=_image_chat(other), timeout=60), 400, "allow-list")
        hop = f"http://localhost:{image_port}/hop"  # each redirect hop is checked again
        expect(httpx.post(f"{allowing.url}{CHAT}", json=_image_chat(hop), timeout=60), 400, "allow-list")


def test_url_fetch_has_a_total_deadline(captioner, image_port):  # noqa: ANN001
    with serve(captioner, allow_url_images=True, allow_private_urls=True, url_timeout_s=1.0) as s:
        url = f"http://127.0.0.1:{image_port}/drip.jpg"
        error = expect(httpx.post(f"{s.url}{CHAT}", json=_image_chat(url), timeout=60), 408, "url_timeout_s")
        assert error["code"] == "url_timeout"


def test_connection_goes_to_the_address_that_was_checked(image_port, monkeypatch):  # noqa: ANN001
    """A name answering a checked address first and another one later (DNS rebinding) is fetched from the first:
    the name is resolved once per hop, and the client connects to that address with the name as Host."""
    from capmill.serve.config import ServeConfig
    from capmill.serve.limits import fetch_image

    lookups: list[str] = []
    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def rebinding(self, host, port, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"  # nothing listens on the second
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return await real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", rebinding)
    config = ServeConfig(allow_url_images=True, url_allow_hosts=["rebind.test"])
    _Images.hosts.clear()
    data = asyncio.run(fetch_image(f"http://rebind.test:{image_port}/photo.jpg", param="image_url", config=config))
    assert data == _Images.payload
    assert lookups == ["rebind.test"]
    assert _Images.hosts == [f"rebind.test:{image_port}"]
