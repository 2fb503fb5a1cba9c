"""API-key auth: with a key set, every route but /healthz answers 401 without it.

The key is accepted as `Authorization: Bearer KEY` (what the OpenAI client sends), `X-API-Key: KEY`, or the
`capmill_key` cookie, which the gallery's key form sets so a browser can use the page.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from importlib import resources

from capmill.serve.httperrors import HTTPProblem, error_body

OPEN_PATHS = frozenset({"/healthz"})
COOKIE = "capmill_key"


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    cookie = headers.get(b"cookie")
    if cookie:
        jar = SimpleCookie()
        try:
            jar.load(cookie.decode("latin-1"))
        except Exception:  # a malformed cookie header is the same as no key
            return None
        if COOKIE in jar:
            from urllib.parse import unquote

            return unquote(jar[COOKIE].value)
    return None


class APIKeyAuth:
    """ASGI middleware; compares keys in constant time."""

    def __init__(self, app, api_key: str):  # noqa: ANN001
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = presented_key(headers)
        if given is not None and hmac.compare_digest(given.encode(), self.key):
            return await self.app(scope, receive, send)
        wants_html = scope["method"] == "GET" and b"text/html" in headers.get(b"accept", b"")
        if wants_html:
            body = resources.files("capmill.serve.gallery").joinpath("login.html").read_bytes()
            ctype = b"text/html; charset=utf-8"
        else:
            message = "missing API key" if given is None else "wrong API key"
            problem = HTTPProblem(401, f"{message}: send 'Authorization: Bearer KEY'", code="invalid_api_key")
            body, ctype = json.dumps(error_body(problem)).encode(), b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="capmill"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
