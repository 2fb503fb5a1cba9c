"""A real HTTP server on 127.0.0.1 for URL inputs: good images, a 404, a slow answer, a flaky 500, a huge body."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from make_inputs import jpeg


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.startswith("/lag/"):  # a good image after a network-like delay; counts concurrent requests
            with self.lock:
                _Handler.in_flight += 1
                _Handler.max_in_flight = max(_Handler.max_in_flight, _Handler.in_flight)
            time.sleep(0.2)
            with self.lock:
                _Handler.in_flight -= 1
            return self._send(200, jpeg((int(self.path.split("/")[-1].split(".")[0]) % 256, 7, 7)))
        if self.path.startswith("/img/"):
            color = int(self.path.split("/")[-1].split(".")[0]) % 256
            return self._send(200, jpeg((color, 100, 50)))
        if self.path == "/flaky.jpg":  # fails once, then works: retried
            if self.hits[self.path] == 1:
                return self._send(503, b"busy")
            return self._send(200, jpeg((1, 2, 3)))
        if self.path == "/slow.jpg":
            time.sleep(2.0)
            return self._send(200, jpeg())
        if self.path == "/drip.jpg":  # answers at once, then one byte at a time, slowly
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if self.path == "/big.jpg":
            return self._send(200, b"\xff\xd8" + b"\0" * 300_000)
        return self._send(404, b"not found")

    def _send(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # many concurrent downloads
    daemon_threads = True


@contextmanager
def serve():
    """Yields the base URL, e.g. http://127.0.0.1:PORT ; `_Handler` keeps hit counts and peak concurrency."""
    _Handler.hits, _Handler.in_flight, _Handler.max_in_flight = {}, 0, 0
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
