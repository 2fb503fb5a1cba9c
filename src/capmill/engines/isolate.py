"""One bad input costs one record: a batch that fails as a whole is run again one item at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from capmill.records import Generation

log = logging.getLogger(__name__)

T = TypeVar("T")


# Exceptions that say the input itself is unusable (a processor refusing an image, a bad prompt): final errors.
# Anything else (out of memory, a crashed engine, a lost connection, a timeout) may pass: retryable.
_FINAL = (ValueError, TypeError, KeyError, IndexError, UnicodeError)


def failed(exc: BaseException) -> Generation:
    """The Generation of an item whose own generation raised, with whether a later attempt may succeed."""
    return Generation(text="", finish_reason="error", error=f"{type(exc).__name__}: {exc}", retryable=is_retryable(exc))


def is_retryable(exc: BaseException) -> bool:
    """Out of memory, an engine crash, a network failure: retryable; the input's own fault: final."""
    from capmill.errors import InputError

    if isinstance(exc, InputError):
        return exc.retryable
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return True
    return not isinstance(exc, _FINAL)


def run_isolating(
    run: Callable[[list[T]], list[Generation]], items: Sequence[T], *, raise_alone: bool = False
) -> list[Generation]:
    """`run(items)`, or, when that raises for a batch of several, `run([item])` for each item alone.

    An item that fails alone gets its error as a Generation, except that a batch of one item re-raises when
    `raise_alone` (the server, whose caller turns a typed error into its HTTP status). Used by every engine and
    by the server's engine thread.
    """
    items = list(items)
    try:
        return run(items)
    except Exception as exc:  # noqa: BLE001 - becomes the items' errors or is isolated below
        if len(items) == 1:
            if raise_alone:
                raise
            return [failed(exc)]
        log.warning("a batch of %d failed (%s: %s); retrying one by one", len(items), type(exc).__name__, exc)
    out: list[Generation] = []
    for item in items:
        try:
            out.extend(run([item]))
        except Exception as exc:  # noqa: BLE001 - this item alone fails: its error is its record
            out.append(failed(exc))
    return out
