"""Stopping a run cleanly: SIGTERM is handled as Ctrl-C is, so a scheduler's stop loses nothing that finished."""

from __future__ import annotations

import signal
import sys
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


class FinishInFlight:
    """While the engine works on a batch, the first Ctrl-C or SIGTERM asks to stop once that batch is back (its
    captions are committed like every other; an engine that works batch by batch leaves the call's later batches
    for the next run, capmill.engines.stop_point); a second one stops at once (that batch is redone on resume).

    Signals land in the main thread only: elsewhere (a run driven from a worker thread) nothing changes.
    """

    def __init__(self) -> None:
        self.pending: BaseException | None = None

    @contextmanager
    def engine_call(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        from capmill.engines import stop_point

        def handler(signum: int, frame: object) -> None:
            if self.pending is not None:  # asked twice: now
                raise self.pending
            self.pending = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
            stop_point.ask()  # an engine working batch by batch stops after the batch in progress
            print(
                "capmill: stopping after the batch in progress (its captions are kept; the engine call's other "
                "inputs wait for the next run); Ctrl-C again stops at once",
                file=sys.stderr,
                flush=True,
            )

        stop_point.clear()
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            stop_point.clear()  # it holds for this call only: later calls (the Python API) run whole

    def raise_if_asked(self) -> None:
        """Raise the stop asked for during the last engine call, if any."""
        if self.pending is not None:
            raise self.pending


def interrupted_message(exc: BaseException, run_dir: str, written: int, total: int | None) -> tuple[str, int]:
    """The line printed when a run is stopped, and its exit status (130 for Ctrl-C, 143 for SIGTERM)."""
    what, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
    held = f"; {total} in all" if total is not None else ""
    return (
        f"stopped by {what}: {written} record(s) saved this session in {run_dir}{held}; "
        "run the same command again to resume",
        code,
    )
