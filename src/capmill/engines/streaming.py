"""Per-row control of a running batch: text as it is generated, and rows whose caller has gone.

A caller (the server) attaches a `RowControl` to a Request before handing it to an engine. The engine builds
a `RowStreamer` for each generate call (a transformers streamer, fed every step with the batch's new tokens)
and adds `CancelledRows` to its stopping criteria: each listening row's text so far is decoded and handed to
its control, and a cancelled row ends at the next step, so a batch never runs on for a client that left.
Requests without a control cost nothing.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from capmill.records import Request

OnDelta = Callable[[str, int], None]  # (new text, tokens generated so far); called on the engine's thread

_controls: dict[int, tuple[weakref.ref, RowControl]] = {}
_lock = threading.Lock()


class RowControl:
    """What a caller can see and do of one Request inside an engine batch."""

    def __init__(self, on_delta: OnDelta | None = None):
        self.on_delta = on_delta
        self.cancelled = False  # set from any thread; the row stops at its next step
        self.sent = ""  # text handed to on_delta so far
        self.tokens = 0

    def feed(self, text: str, tokens: int) -> None:
        """The row's whole text so far; hands on what extends the text already sent.

        A trailing replacement character (a multi-byte character cut between tokens) and trailing spaces wait
        for the next token, so what is sent is always a prefix of the final text. A retry of the same row (a
        failed batch run again one by one) sends nothing twice.
        """
        self.tokens = tokens
        stable = text.rstrip("\ufffd").rstrip()
        if self.on_delta is not None and len(stable) > len(self.sent) and stable.startswith(self.sent):
            delta, self.sent = stable[len(self.sent) :], stable
            self.on_delta(delta, tokens)

    def rest(self, final: str) -> str:
        """What is left to send once the final text is known ('' when nothing, or when it does not extend)."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


def attach(request: Request, control: RowControl) -> None:
    with _lock:
        _controls[id(request)] = (weakref.ref(request), control)


def detach(request: Request) -> None:
    with _lock:
        _controls.pop(id(request), None)


def control_of(request: Request) -> RowControl | None:
    with _lock:
        entry = _controls.get(id(request))
    if entry is None or entry[0]() is not request:
        return None
    return entry[1]


def controls_of(batch: Sequence[Request]) -> list[RowControl | None]:
    return [control_of(r) for r in batch]


class RowStreamer:
    """A transformers streamer for a batch: forwards every call to `inner` (the engine's own streamer) and feeds
    each listening row's decoded text to its control.

    `prompt_len` is the width of the batch's prompt: the first `put` holds the prompt, and any columns past it
    are tokens generated before this generate call (row-merged decoding makes each row's first token alone).
    """

    def __init__(self, inner: Any, controls: list[RowControl | None], prompt_len: int, decode: Callable[[Any], list]):
        self.inner, self.controls, self.prompt_len, self.decode = inner, controls, prompt_len, decode
        self.rows: list[list[int]] = [[] for _ in controls]
        self.listening = [i for i, c in enumerate(controls) if c is not None and c.on_delta is not None]
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        if self.inner is not None:
            self.inner.put(value)
        if not self.seen_prompt:
            self.seen_prompt = True
            if value.dim() == 2 and value.shape[1] > self.prompt_len and value.shape[0] == len(self.rows):
                self._add(value[:, self.prompt_len :])
            return
        if value.shape[0] != len(self.rows):
            return  # a single-row pass of row-merged decoding: its token comes back with the batch's prompt
        self._add(value.reshape(len(self.rows), -1))

    def _add(self, tokens: Any) -> None:
        if not self.listening:
            return
        import torch

        self.listening = [i for i in self.listening if not self.controls[i].cancelled]  # type: ignore[union-attr]
        if not self.listening:
            return
        for i in self.listening:
            self.rows[i].extend(int(t) for t in tokens[i])
        texts = self.decode(torch.tensor([self.rows[i] for i in self.listening], dtype=torch.long))
        for i, text in zip(self.listening, texts, strict=True):
            self.controls[i].feed(text, len(self.rows[i]))  # type: ignore[union-attr]

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()

    def __getattr__(self, name: str) -> Any:  # the engine's own streamer's extras (put_first, first)
        return getattr(self.inner, name)


def row_streamer(inner: Any, batch: Sequence[Request], prompt_len: int, decode: Callable[[Any], list]) -> Any:
    """`inner` itself when no row of the batch is listened to, else a RowStreamer around it."""
    controls = controls_of(batch)
    if not any(c is not None and c.on_delta is not None for c in controls):
        return inner
    return RowStreamer(inner, controls, prompt_len, decode)


class CancelledRows:
    """A transformers stopping criterion: True for rows whose control was cancelled."""

    def __init__(self, controls: list[RowControl | None]):
        self.controls = controls

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if input_ids.shape[0] != len(self.controls):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        flags = [c is not None and c.cancelled for c in self.controls]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def add_cancellation(kwargs: dict[str, Any], batch: Sequence[Request]) -> dict[str, Any]:
    """Add CancelledRows to generate kwargs when any row of the batch has a control."""
    controls = controls_of(batch)
    if not any(c is not None for c in controls):
        return kwargs
    from transformers import StoppingCriteriaList

    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(CancelledRows(controls))
    kwargs["stopping_criteria"] = criteria
    return kwargs
