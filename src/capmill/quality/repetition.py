"""Stop a repetition loop while decoding, instead of after the whole token budget is spent.

`RepetitionStop` is a transformers `StoppingCriteria`: a row stops as soon as its generated tail is one n-gram
of at most `max_ngram` tokens repeated `min_repeats` times in a row (a single token: `single_token_repeats`
times), which is the shape of the loops small VLMs fall into ("a dog a dog a dog ..."). Only rows that asked for
it can stop, and only on tokens they generated (the prompt is never looked at). The stopped row keeps the loop's
tokens it has, so the gate sees the loop and retries the item.

Checked against transformers 5.x: a StoppingCriteria returning a per-row bool tensor ends exactly those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXTRA_ARG = "capmill_stop_repetition"  # vLLM: the SamplingParams.extra_args key of a row's settings


@dataclass(frozen=True)
class RepetitionSettings:
    """What counts as a loop; the defaults leave ordinary text alone (a phrase repeated twice is not a loop)."""

    max_ngram: int = 8
    min_repeats: int = 4
    single_token_repeats: int = 12

    @property
    def span(self) -> int:
        """How many generated tokens at most the check looks at (the longest loop it can see)."""
        return max(self.single_token_repeats, self.max_ngram * self.min_repeats)


class RepetitionStop:
    """Per-row loop detector for `model.generate(stopping_criteria=...)`; a transformers StoppingCriteria."""

    def __init__(self, prompt_length: int, rows: list[RepetitionSettings | None]):
        self.prompt_length = prompt_length
        self.rows = rows
        self.stopped: set[int] = set()  # rows this criterion ended, for the engine's finish reason

    def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_length :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, settings in enumerate(self.rows):
            if settings is not None and row < len(done) and looping(generated[row], settings):
                done[row] = True
                self.stopped.add(row)
        return done


def looping(tokens: Any, settings: RepetitionSettings) -> bool:
    """Whether the tail of `tokens` (1-D) is one n-gram repeated back to back often enough."""
    size = int(tokens.shape[0])
    for n in range(1, settings.max_ngram + 1):
        repeats = settings.single_token_repeats if n == 1 else settings.min_repeats
        span = n * repeats
        if span > size:
            break
        tail = tokens[size - span :].reshape(repeats, n)
        if bool((tail == tail[-1]).all()):
            return True
    return False


def add_repetition_stop(kwargs: dict[str, Any], batch: list[Any], prompt_length: int) -> dict[str, Any]:
    """`generate` kwargs with a RepetitionStop added for the requests that ask for one (`stop_repetition`), and
    unchanged when none does; `prompt_length` is the padded input length of the batch."""
    rows = [repetition_settings(getattr(r, "stop_repetition", None)) for r in batch]
    if all(row is None for row in rows):
        return kwargs
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Criterion(RepetitionStop, StoppingCriteria):
        pass

    criteria = StoppingCriteriaList(list(kwargs.get("stopping_criteria") or []))
    criteria.append(_Criterion(prompt_length, rows))
    return {**kwargs, "stopping_criteria": criteria}


def repetition_settings(value: Any) -> RepetitionSettings | None:
    """What a request's `stop_repetition` asks for: None (nothing), the defaults (True) or the given settings."""
    if value is None or value is False:
        return None
    if isinstance(value, RepetitionSettings):
        return value
    if isinstance(value, dict):
        return RepetitionSettings(**value)
    return RepetitionSettings()
