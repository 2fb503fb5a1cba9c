"""A stop asked during an engine call, seen by engines between the batches of that call.

A run hands its engine a window of several batches in one call. When a first Ctrl-C (or SIGTERM) asks the run to
stop (capmill.run.stopping), an engine that works batch by batch (the transformers engine) finishes the batch in
progress and returns the rest of the call as `NOT_RUN`: the run keeps what was computed and leaves those inputs for
the next run, as if they had never been sent. Engines that run a call's requests all at once (vLLM, an
OpenAI-compatible server) finish the whole call.
"""

from __future__ import annotations

import threading

NOT_RUN = "not_run"  # Generation.finish_reason of a request an engine left for a later run
_asked = threading.Event()


def ask() -> None:
    _asked.set()


def clear() -> None:
    _asked.clear()


def asked() -> bool:
    return _asked.is_set()
