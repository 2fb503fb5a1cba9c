"""Helpers shared by the serve tests: a uvicorn server in a thread, and small encoders."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

SERVE_PROFILE = "inkscope-2b"  # Qwen2-VL: the card that streams to a demo page


class Server:
    """A uvicorn server in a thread; `url` is its base address."""

    def __init__(self, app):  # noqa: ANN001
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="capmill-test-server", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def idle(self, timeout: float = 30.0) -> None:
        """Wait until the engine has nothing queued or running (servers in a session share one model)."""
        service = self.app.state.service
        deadline = time.monotonic() + timeout
        while service is not None and (service.batcher.depth or service.batcher._in_flight):
            if time.monotonic() > deadline:
                raise RuntimeError("engine still busy")
            time.sleep(0.02)


@contextlib.contextmanager
def serve(captioner, **config) -> Iterator[Server]:  # noqa: ANN001
    """A running server with this captioner and these ServeConfig fields."""
    from capmill.serve.app import create_app
    from capmill.serve.config import ServeConfig

    app = create_app(ServeConfig(**config), captioner=captioner)
    with Server(app) as server:
        try:
            yield server
        finally:
            server.idle()


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class SharedCaptioner:
    """The session's captioner lent to a runner, which closes what it is given: closing is left to the owner."""

    def __init__(self, captioner):  # noqa: ANN001
        self._captioner = captioner

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._captioner, name)

    def close(self) -> None:
        pass
