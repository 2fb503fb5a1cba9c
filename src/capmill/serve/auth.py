"""API-key auth: with a key set, every route but /healthz (and the login form's POST) answers 401 without it.

Programs send the key as `Authorization: Bearer KEY` (what the OpenAI client sends) or `X-API-Key: KEY`. A
browser posts it once to `/auth/login`; the server answers with an HttpOnly, SameSite=Strict session cookie
holding an HMAC of the key (never the key itself), so page scripts cannot read it and other sites cannot
send it. `POST /auth/logout` clears it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from http.cookies import SimpleCookie
from importlib import resources
from urllib.parse import parse_qs

from capmill.serve.httperrors import HTTPProblem, error_body

OPEN_PATHS = frozenset({"/healthz"})
LOGIN, LOGOUT = "/auth/login", "/auth/logout"
COOKIE = "capmill_session"
MAX_LOGIN_BODY = 4096


def session_token(api_key: str) -> str:
    """What the session cookie holds: derived from the key, useless for anything but this server's gallery."""
    return hmac.new(api_key.encode(), b"capmill gallery session", hashlib.sha256).hexdigest()


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    return None


def presented_session(headers: dict[bytes, bytes]) -> str | None:
    cookie = headers.get(b"cookie")
    if not cookie:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie.decode("latin-1"))
    except Exception:  # a malformed cookie header is the same as no cookie
        return None
    return jar[COOKIE].value if COOKIE in jar else None


class APIKeyAuth:
    """ASGI middleware; compares keys and session tokens in constant time."""

    def __init__(self, app, api_key: str):  # noqa: ANN001
        self.app, self.key = app, api_key.encode()
        self.session = session_token(api_key).encode()

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["method"] == "POST" and scope["path"] == LOGIN:
            return await self._login(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] == LOGOUT:
            return await _respond(send, 303, b"", [(b"location", b"/"), (b"set-cookie", _cookie("", 0, scope))])
        given = presented_key(headers)
        if given is not None and hmac.compare_digest(given.encode(), self.key):
            return await self.app(scope, receive, send)
        session = presented_session(headers)
        if given is None and session is not None and hmac.compare_digest(session.encode(), self.session):
            return await self.app(scope, receive, send)
        if scope["method"] == "GET" and b"text/html" in headers.get(b"accept", b""):
            return await _login_page(send, 401)
        message = "missing API key" if given is None and session is None else "wrong API key"
        problem = HTTPProblem(401, f"{message}: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        body = json.dumps(error_body(problem)).encode()
        extra = [(b"www-authenticate", b'Bearer realm="capmill"')]
        await _respond(send, 401, body, [(b"content-type", b"application/json"), *extra])

    async def _login(self, scope, receive, send):  # noqa: ANN001
        """The login form's POST (`key=...`, urlencoded): the session cookie and a redirect to the gallery."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY:
                return await _respond(send, 413, b"login form too large", [(b"content-type", b"text/plain")])
            if not message.get("more_body", False):
                break
        key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0]
        if not hmac.compare_digest(key.encode(), self.key):
            return await _login_page(send, 401, wrong=True)
        cookie = _cookie(self.session.decode(), None, scope)
        await _respond(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie), (b"cache-control", b"no-store")])


def _cookie(value: str, max_age: int | None, scope: dict) -> bytes:
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if scope.get("scheme") == "https":
        parts.append("Secure")
    return "; ".join(parts).encode()


async def _login_page(send, status: int, wrong: bool = False) -> None:  # noqa: ANN001
    page = resources.files("capmill.serve.gallery").joinpath("login.html").read_text(encoding="utf-8")
    note = '<p class="wrong" role="alert">That key is not right.</p>' if wrong else ""
    body = page.replace("<!--note-->", note).encode()
    await _respond(
        send, status, body, [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
    )


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:  # noqa: ANN001
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
