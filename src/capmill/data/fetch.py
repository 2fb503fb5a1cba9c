"""Fetch the bytes of a lazy Item (a local path or an http(s) URL); runs in the decode workers."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from capmill.errors import InputError
from capmill.records import Item


@dataclass(frozen=True)
class FetchOptions:
    """Downloads: per-request timeout in seconds, retries on timeouts, connection errors and 5xx, a size cap."""

    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 256 * 1024 * 1024
    total_timeout_factor: float = 6.0  # a whole download may take this many timeouts
    user_agent: str = "capmill (+https://github.com/capmill)"


_CLIENT: Any = None


def load(item: Item, options: FetchOptions | None = None) -> None:
    """Fill `item.data` (or `item.text` for text items) from `meta["path"]` or `meta["url"]`; raise InputError."""
    options = options or FetchOptions()
    if item.data is not None or (item.kind == "text" and item.text is not None):
        return
    if "path" in item.meta:
        data = read_file(item.meta["path"], item.source, options.max_bytes)
    elif "url" in item.meta:
        data = fetch_url(item.meta["url"], options)
    else:
        raise InputError(item.source, "no data", "the source gave neither bytes, text, a path nor a URL")
    if item.kind == "text":
        try:
            item.text = data.decode("utf-8-sig").strip()
        except UnicodeDecodeError as exc:
            raise InputError(item.source, "not text", str(exc)) from exc
        if not item.text:
            raise InputError(item.source, "empty file", "no caption text")
    else:
        item.data = data


def read_file(path: str, source: str, max_bytes: int) -> bytes:
    """Read a local file, naming a broken symlink, a missing file and an unreadable one apart."""
    if os.path.islink(path) and not os.path.exists(path):
        raise InputError(source, "broken symlink", f"points to {os.readlink(path)}")
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InputError(source, "file too large", f"{size} bytes > limit {max_bytes}")
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise InputError(source, "missing file", "no such file") from exc
    except OSError as exc:  # permission denied, a directory, an I/O error
        raise InputError(source, "unreadable file", exc.strerror or str(exc)) from exc


def _client(options: FetchOptions) -> Any:
    global _CLIENT
    if _CLIENT is None:
        import httpx

        _CLIENT = httpx.Client(follow_redirects=True, headers={"User-Agent": options.user_agent})
    return _CLIENT


def fetch_url(url: str, options: FetchOptions) -> bytes:
    """GET with retries: a 4xx fails at once, timeouts / connection errors / 5xx are retried with backoff."""
    import httpx

    last: InputError | None = None
    for attempt in range(options.retries + 1):
        if attempt:
            time.sleep(options.backoff * (2 ** (attempt - 1)))
        try:
            return _get(url, options)
        except httpx.TimeoutException as exc:
            last = InputError(url, "timeout", f"no answer within {options.timeout:g}s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            last = InputError(url, "connection error", str(exc) or type(exc).__name__)
        except InputError as exc:
            if not exc.reason.startswith("http 5"):
                raise
            last = exc
    assert last is not None
    if options.retries:
        last.detail = f"{last.detail}; after {options.retries + 1} attempts"
        last.args = (f"{last.source}: {last.reason} ({last.detail})",)
    raise last


def _get(url: str, options: FetchOptions) -> bytes:
    import httpx

    timeout = httpx.Timeout(options.timeout)
    with _client(options).stream("GET", url, timeout=timeout) as response:
        if response.status_code >= 400:
            raise InputError(url, f"http {response.status_code}", response.reason_phrase or "")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > options.max_bytes:
            raise InputError(url, "download too large", f"{declared} bytes > limit {options.max_bytes}")
        chunks, total, deadline = [], 0, time.monotonic() + options.timeout * options.total_timeout_factor
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:  # a server dripping bytes never trips the per-read timeout
                raise httpx.ReadTimeout(f"download took over {options.timeout * options.total_timeout_factor:g}s")
            total += len(chunk)
            if total > options.max_bytes:
                raise InputError(url, "download too large", f"more than {options.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
