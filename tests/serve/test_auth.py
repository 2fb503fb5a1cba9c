"""With --api-key every route but /healthz answers 401 without the key (the official client included)."""

from __future__ import annotations

import httpx
import pytest
from openai import AuthenticationError, OpenAI
from serve_helpers import SERVE_PROFILE, serve

from capmill.serve.auth import session_token

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def locked(captioner, run_dir):  # noqa: ANN001
    with serve(captioner, api_key=KEY, browse_dir=run_dir) as s:
        yield s


def every_route(app) -> list[tuple[str, str]]:  # noqa: ANN001
    """(method, concrete path) for every route the app has, path parameters filled in."""
    out = []
    for route in _flatten(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD":
                continue
            out.append((method, route.path.replace("{name}", "gallery.js").replace("{record_id:path}", "x")))
    return out


def _flatten(routes) -> list:  # noqa: ANN001
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router (FastAPI >= 0.16x)
        out.extend(_flatten(inner.routes) if inner is not None else [route])
    return out


def test_every_route_but_healthz_needs_the_key(locked):  # noqa: ANN001
    routes = every_route(locked.app)
    assert len(routes) >= 12 and ("GET", "/healthz") in routes and ("POST", "/v1/chat/completions") in routes
    for method, path in routes:
        response = httpx.request(method, locked.url + path, json={})
        if path == "/healthz":
            assert response.status_code == 200
        else:
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer")
    # an unknown path too: nothing is revealed without the key
    assert httpx.get(locked.url + "/nope").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"Cookie": f"capmill_session={session_token(KEY)}"}],
    ids=["bearer", "x-api-key", "cookie"],
)
def test_the_key_opens_every_way(locked, headers):  # noqa: ANN001
    assert httpx.get(f"{locked.url}/v1/models", headers=headers).status_code == 200
    assert httpx.get(f"{locked.url}/metrics", headers=headers).status_code == 200
    assert httpx.get(f"{locked.url}/browse/records", headers=headers).json()["total"] == 8


def test_wrong_key_and_key_in_wrong_place(locked):  # noqa: ANN001
    for headers in (
        {"Authorization": "Bearer nope"},
        {"Authorization": KEY},
        {"Cookie": "capmill_session=nope"},
        {"Cookie": f"capmill_key={KEY}"},
    ):
        response = httpx.get(f"{locked.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_openai_client(locked, photo_bytes):  # noqa: ANN001
    with pytest.raises(AuthenticationError):
        OpenAI(api_key="wrong", base_url=f"{locked.url}/v1", max_retries=0).models.list()
    client = OpenAI(api_key=KEY, base_url=f"{locked.url}/v1", max_retries=0)
    assert [m.id for m in client.models.list().data][0] == SERVE_PROFILE
    reply = client.chat.completions.create(
        model=SERVE_PROFILE, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content is not None


def test_browser_gets_a_key_form(locked):  # noqa: ANN001
    page = httpx.get(f"{locked.url}/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "API key needed" in page.text and 'action="/auth/login"' in page.text


def test_login_sets_an_httponly_session_cookie(locked):  # noqa: ANN001
    wrong = httpx.post(f"{locked.url}/auth/login", data={"key": "nope"})
    assert wrong.status_code == 401 and "not right" in wrong.text and "set-cookie" not in wrong.headers
    right = httpx.post(f"{locked.url}/auth/login", data={"key": KEY})
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert KEY not in cookie  # the cookie holds a token derived from the key, not the key
    value = cookie.split(";")[0].split("=", 1)[1]
    assert httpx.get(f"{locked.url}/v1/models", cookies={"capmill_session": value}).status_code == 200
    out = httpx.post(f"{locked.url}/auth/logout", cookies={"capmill_session": value})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_a_session_of_one_key_does_not_open_a_server_with_another(captioner):  # noqa: ANN001
    with serve(captioner, api_key="another-key") as other:
        stale = {"capmill_session": session_token(KEY)}
        assert httpx.get(f"{other.url}/v1/models", cookies=stale).status_code == 401
        fresh = {"capmill_session": session_token("another-key")}
        assert httpx.get(f"{other.url}/v1/models", cookies=fresh).status_code == 200
