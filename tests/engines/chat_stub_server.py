"""A small real HTTP server on 127.0.0.1 speaking just enough of the chat-completions API to test client plumbing.

It answers from a script (status, delay, headers, body per call) and records every request body and the
largest number of requests it had in flight at once. It proves nothing about a model: the engine's real-server
tests use `vllm serve` and `capmill serve`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def ok(text: str = "a caption", **extra: Any) -> Reply:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return Reply(200, {"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})


class ChatStub:
    """Start with `with ChatStub(script) as stub:`; `stub.url` is the base URL (…/v1)."""

    def __init__(self, script: Callable[[dict[str, Any], int], Reply], models: tuple[str, ...] = ("tiny",)):
        self.script = script
        self.models = models
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, reply: Reply) -> None:
                data = json.dumps(reply.body if reply.body is not None else {"error": {"message": "scripted"}}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def do_GET(self) -> None:  # noqa: N802
                if self.path.endswith("/models"):
                    self._send(Reply(200, {"object": "list", "data": [{"id": m} for m in stub.models]}))
                else:
                    self._send(Reply(404))

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    n = stub.calls
                    stub.calls += 1
                    stub.bodies.append(body)
                    stub.headers.append(dict(self.headers))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    reply = stub.script(body, n)
                    if reply.delay:
                        time.sleep(reply.delay)
                    self._send(reply)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ChatStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def user_text(body: dict[str, Any]) -> str:
    """The text part of the last user message of a request body."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
