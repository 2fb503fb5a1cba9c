"""Limits on what clients send: body size, image bytes and pixels, base64 and data URIs, and URL images.

URL images are fetched only when the server allows it, and never from loopback, private, link-local or
otherwise non-public addresses unless told (`allow_private_urls`), checked on every redirect hop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from capmill.serve.config import ServeConfig
from capmill.serve.constraints import check_size
from capmill.serve.httperrors import HTTPProblem, bad_request, too_large

_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_MAX_REDIRECTS = 3


class BodyLimit:
    """ASGI middleware: 413 for a body over the cap, by Content-Length or by counting what arrives."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_413(send, f"request body of {int(declared)} bytes exceeds {self.max_bytes} bytes")
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # A Starlette HTTPException passes through FastAPI's body parsing unchanged (ours would not).
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        return await self.app(scope, counting_receive, send)


async def _send_413(send, message: str) -> None:  # noqa: ANN001
    import json

    from capmill.serve.httperrors import error_body

    body = json.dumps(error_body(too_large(message))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def b64decode(text: str, *, param: str, max_bytes: int) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, whitespace allowed) within the image byte cap."""
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > max_bytes + 3:
        raise too_large(f"{param}: image of about {len(compact) * 3 // 4} bytes exceeds {max_bytes} bytes", param)
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{param}: bad base64 ({exc})", param, "bad_base64") from exc
    if not data:
        raise bad_request(f"{param}: empty image", param, "empty_image")
    if len(data) > max_bytes:
        raise too_large(f"{param}: image of {len(data)} bytes exceeds {max_bytes} bytes", param)
    return data


def decode_data_uri(uri: str, *, param: str, max_bytes: int) -> bytes:
    """`data:image/png;base64,...` (also `data:image;base64,...` as the CapRL card sends) -> bytes."""
    match = _DATA_URI.match(uri.strip())
    if not match:
        raise bad_request(f"{param}: not a data URI", param, "bad_data_uri")
    mime = match["mime"].strip().lower()
    if mime and not mime.startswith("image"):
        raise bad_request(f"{param}: unsupported media type {mime!r}; send an image", param, "unsupported_media")
    if ";base64" not in match["params"].lower():
        raise bad_request(f"{param}: data URI must be base64-encoded", param, "bad_data_uri")
    return b64decode(match["data"], param=param, max_bytes=max_bytes)


def image_or_base64(value: str, *, param: str, max_bytes: int) -> bytes:
    """A JSON image field: a data URI or bare base64."""
    if value.lstrip().startswith("data:"):
        return decode_data_uri(value, param=param, max_bytes=max_bytes)
    return b64decode(value, param=param, max_bytes=max_bytes)


async def image_url_bytes(url: str, *, param: str, config: ServeConfig) -> bytes:
    """The bytes behind an `image_url`: a data URI, or an http(s) URL when the server allows them."""
    url = url.strip()
    if url.startswith("data:"):
        return decode_data_uri(url, param=param, max_bytes=config.max_image_bytes)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise bad_request(f"{param}: unsupported URL scheme {scheme or '(none)'!r}; send a data URI", param)
    if not config.allow_url_images:
        raise bad_request(
            f"{param}: http(s) image URLs are disabled on this server (start it with --allow-url-images); "
            "send the image as a data:image/...;base64 URI",
            param,
            "url_images_disabled",
        )
    return await fetch_image(url, param=param, config=config)


async def fetch_image(url: str, *, param: str, config: ServeConfig) -> bytes:
    """GET an image within `url_timeout_s` for the whole fetch (redirects and slow senders included)."""
    try:
        async with asyncio.timeout(config.url_timeout_s):
            return await _fetch(url, param=param, config=config)
    except TimeoutError as exc:
        raise HTTPProblem(
            408,
            f"{param}: fetching {url} took over {config.url_timeout_s:g} s (url_timeout_s)",
            param=param,
            code="url_timeout",
        ) from exc


async def _fetch(url: str, *, param: str, config: ServeConfig) -> bytes:
    """Each hop: resolve the host once, check the address, and connect to that very address (the Host header and
    TLS name stay the URL's), so a name that resolves differently on a second lookup cannot reach elsewhere."""
    import httpx

    async with httpx.AsyncClient(follow_redirects=False, timeout=config.url_timeout_s, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            address = await checked_address(url, param=param, config=config)
            netloc = f"[{address}]" if ":" in address else address
            if parts.port:
                netloc += f":{parts.port}"
            pinned = urlunsplit(parts._replace(netloc=netloc))
            headers = {"host": parts.netloc.rsplit("@", 1)[-1]}
            extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
            try:
                request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    return await _read_image(response, url, param, config)
                finally:
                    await response.aclose()
            except HTTPProblem:
                raise
            except httpx.TimeoutException as exc:
                raise HTTPProblem(
                    408, f"{param}: fetching {url} timed out ({type(exc).__name__})", param=param, code="url_timeout"
                ) from exc
            except httpx.HTTPError as exc:
                raise bad_request(f"{param}: could not fetch {url} ({type(exc).__name__}: {exc})", param) from exc
    raise bad_request(f"{param}: more than {_MAX_REDIRECTS} redirects", param)


async def _read_image(response: Any, url: str, param: str, config: ServeConfig) -> bytes:
    if response.status_code != 200:
        raise bad_request(f"{param}: fetching {url} answered HTTP {response.status_code}", param)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > config.max_image_bytes:
        raise too_large(f"{param}: {url} is {declared} bytes, over {config.max_image_bytes}", param)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > config.max_image_bytes:
            raise too_large(f"{param}: {url} is over {config.max_image_bytes} bytes", param)
        chunks.append(chunk)
    return b"".join(chunks)


def host_allowed(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: list[str]) -> bool:
    """Whether an allow-list entry (a host name, `*.domain`, or a network such as 10.0.0.0/8) names this host."""
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.strip().lower().rstrip(".")
        if "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


async def checked_address(url: str, *, param: str, config: ServeConfig) -> str:
    """The one address this URL's host will be reached at, after the SSRF check.

    With `url_allow_hosts`, only hosts it names are fetched, wherever they resolve; without it, any host whose
    addresses are all public (or any address at all with `allow_private_urls`).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request(f"{param}: not an http(s) URL: {url}", param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise bad_request(f"{param}: bad port in {url}", param) from exc
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise bad_request(f"{param}: cannot resolve {parts.hostname} ({exc})", param) from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise bad_request(f"{param}: {parts.hostname} has no address", param)
    allow = config.url_allow_hosts
    for address in addresses:
        if allow:
            if not host_allowed(parts.hostname, address, allow):
                raise bad_request(
                    f"{param}: {parts.hostname} is not in this server's URL allow-list (url_allow_hosts)",
                    param,
                    "host_not_allowed",
                )
        elif not config.allow_private_urls and (not address.is_global or address.is_multicast):
            raise bad_request(
                f"{param}: {parts.hostname} resolves to non-public address {address}; refused",
                param,
                "private_address",
            )
    return str(addresses[0])


def check_request_limits(chat: Any, fields: dict[str, Any], config: ServeConfig) -> None:
    """The limits on what a chat request asks for, each refused naming the limit (400 or 413)."""
    max_new = chat.max_completion_tokens or chat.max_tokens
    if max_new is not None and max_new > config.max_tokens_limit:
        raise bad_request(
            f"max_tokens {max_new} exceeds this server's limit of {config.max_tokens_limit} (max_tokens_limit)",
            "max_tokens",
        )
    if len(chat.messages) > config.max_messages:
        raise too_large(f"{len(chat.messages)} messages exceed the limit of {config.max_messages} (max_messages)")
    chars = sum(
        len(m.content) if isinstance(m.content, str) else sum(len(getattr(p, "text", "")) for p in m.content or [])
        for m in chat.messages
    )
    if chars > config.max_text_chars:
        raise too_large(
            f"{chars} characters of text exceed the limit of {config.max_text_chars} (max_text_chars)", "messages"
        )
    stop = fields.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > config.max_stop_sequences:
        raise bad_request(
            f"stop: {len(stops)} strings exceed the limit of {config.max_stop_sequences} (max_stop_sequences)", "stop"
        )
    for s in stops:
        if len(s) > config.max_stop_chars:
            raise bad_request(
                f"stop: a string of {len(s)} characters exceeds the limit of {config.max_stop_chars} (max_stop_chars)",
                "stop",
            )
    if chat.tools is not None:
        check_size([t.model_dump(exclude_none=True) for t in chat.tools], "tools", config)
