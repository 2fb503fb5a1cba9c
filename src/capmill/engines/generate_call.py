"""One transformers `generate` call: the kwargs it is given (decoding, stop strings, constrained decoding, per-row
sampling and cancellation) and what is read back (each row's token count and finish reason, when its first token
existed, which token ids stand for media).
"""

from __future__ import annotations

import time
from typing import Any

from capmill.engines import row_sampling, streaming
from capmill.records import Decoding, Request


def generate_kwargs(
    decoding: Decoding, batch: list[Request], tokenizer: Any, generation_config: Any, stop_cache: dict
) -> dict[str, Any]:
    """The kwargs of one `generate` call over `batch`: decoding, stop strings, constraints, per-row sampling."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": decoding.max_new_tokens,
        "do_sample": decoding.do_sample,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if decoding.do_sample:
        for name in ("temperature", "top_p", "top_k", "repetition_penalty"):
            value = getattr(decoding, name)
            if value is not None:
                kwargs[name] = value
    elif decoding.repetition_penalty is not None:
        kwargs["repetition_penalty"] = decoding.repetition_penalty
    if decoding.stop:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([stop_criteria(tuple(decoding.stop), tokenizer, stop_cache)])
    constraints = [r.constraint for r in batch]
    if any(constraints):
        from transformers import LogitsProcessorList

        from capmill.engines.constrained import logits_processors

        processor = logits_processors(
            tokenizer,
            constraints,
            max_new_tokens=decoding.max_new_tokens,  # outputs close within budget instead of being cut
            eos_token_id=generation_config.eos_token_id,
        )
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    # one random generator per row (row_sampling.py), and rows whose caller has gone stop at the next step
    kwargs = row_sampling.per_row(kwargs, batch, generation_config)
    return streaming.add_cancellation(kwargs, batch)


def stop_criteria(stop: tuple[str, ...], tokenizer: Any, stop_cache: dict) -> Any:
    """transformers' StopStringCriteria (what `generate(stop_strings=...)` builds), built once per stop list:
    building it walks the whole vocabulary (~65 ms for Qwen's), which `stop_strings=` repeats every call."""
    if stop not in stop_cache:
        from transformers import StopStringCriteria

        stop_cache[stop] = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop))
    return stop_cache[stop]


def completion(row: list[int], text: str, decoding: Decoding, generation_config: Any, pad: Any) -> tuple[int, str]:
    """Tokens generated for this row (padding after its end excluded) and why it stopped."""
    eos = generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for k, token in enumerate(row):
        if token in eos_ids:
            return k + 1, "stop"
        if token == pad:
            return k, "stop"
    if decoding.stop and any(text.endswith(s) or s in text for s in decoding.stop):
        return len(row), "stop"
    return len(row), "length" if len(row) >= decoding.max_new_tokens else "stop"


def media_token_ids(processor: Any, tokenizer: Any) -> set[int]:
    """Token ids that stand for an image or video: the shared prefix ends before the first one."""
    ids = set()
    for owner in (processor, tokenizer):
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "image_start_token_id"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                ids.add(value)
        for name in ("image_token", "video_token", "start_image_token", "vision_start_token"):
            token = getattr(owner, name, None)
            if isinstance(token, str):
                token_id = tokenizer.convert_tokens_to_ids(token)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    ids.add(token_id)
    return ids


class FirstTokenClock:
    """A generate streamer that only notes when the first new token exists: the end of the prompt pass."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:  # called with the prompt, then once per step
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    def put_first(self) -> None:
        """row_merge: the rows' prompt passes are done (their first tokens exist)."""
        self.first, self.calls = time.perf_counter(), 2
