"""ASGI guards against slow and greedy clients: a deadline for receiving a request, and open requests per client.

The receive deadline covers the body upload, URL image fetches and image preparation, everything before a
request reaches the queue (a slow-drip upload cannot hold a connection for ever): past it the answer is 408.
A client (by address) with `max_inflight_per_client` generating requests open gets 429 for the next one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from capmill.serve.httperrors import HTTPProblem, error_body

DEADLINE = "capmill.receive_deadline"
GENERATING_PATHS = frozenset({"/v1/chat/completions", "/v1/captions"})


def _timeout_problem(seconds: float) -> HTTPProblem:
    return HTTPProblem(
        408,
        f"the request was not received and prepared within {seconds:g} s (receive_timeout_s)",
        code="request_timeout",
        headers={"Connection": "close"},
    )


class ReceiveDeadline:
    """Bounds the time to receive a request's body; the handler bounds its own preparation (`before_queue`)."""

    def __init__(self, app: Any, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import asyncio

        deadline = time.monotonic() + self.seconds
        scope[DEADLINE] = (deadline, self.seconds)
        body_done = False

        async def timed_receive():  # noqa: ANN202
            nonlocal body_done
            if body_done:  # later calls wait for a disconnect (streaming answers): no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                from starlette.exceptions import HTTPException

                problem = _timeout_problem(self.seconds)
                raise HTTPException(408, problem.message, headers=problem.headers) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return await self.app(scope, timed_receive, send)


@contextlib.asynccontextmanager
async def before_queue(scope: dict[str, Any]) -> AsyncIterator[None]:
    """The rest of the receive deadline for reading, fetching and preparing inside a handler (408 past it)."""
    import asyncio

    deadline, seconds = scope.get(DEADLINE, (None, 0.0))
    if deadline is None:
        yield
        return
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())):
            yield
    except TimeoutError as exc:
        raise _timeout_problem(seconds) from exc


class ClientLimit:
    """429 for a generating request from a client that already has `limit` of them open."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit
        self.open: Counter[str] = Counter()

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATING_PATHS:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown", 0))[0]
        if self.open[client] >= self.limit:
            problem = HTTPProblem(
                429,
                f"{self.limit} requests from {client} are already open (max_inflight_per_client); retry later",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )
            body = json.dumps(error_body(problem)).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return None
        self.open[client] += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]
