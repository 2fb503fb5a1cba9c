"""Stopping a run cleanly: SIGTERM is handled as Ctrl-C is, so a scheduler's stop loses nothing that finished."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(exc: BaseException, run_dir: str, written: int, total: int | None) -> tuple[str, int]:
    """The line printed when a run is stopped, and its exit status (130 for Ctrl-C, 143 for SIGTERM)."""
    what, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
    held = f"; {total} in all" if total is not None else ""
    return (
        f"stopped by {what}: {written} record(s) saved this session in {run_dir}{held}; "
        "run the same command again to resume",
        code,
    )
