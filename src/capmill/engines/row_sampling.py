"""Sampling with one random generator per row, so a row's tokens depend only on its own seed and logits.

transformers samples a whole batch from the process's one random stream: who else is in the batch changes a
row's draws, and seeding means reseeding the process for everyone. `RowSampler` is the last logits
processor: it applies temperature, top-k and top-p as transformers does, draws each row's token from that
row's own generator (seeded by its Request's `seed`, else at random) and leaves only that token possible,
so the sampling step after it can only pick it. A seeded request then gives the same tokens alone or beside
any other requests, and no request touches the process's random state.

Version-sensitive: the warpers' fallback values come from transformers' private
`GenerationConfig._get_default_generation_params()` (what generate fills unset fields with); checked against
transformers 5.25.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from capmill.records import Request

WARPERS = ("temperature", "top_k", "top_p")


class RowSampler:
    """Logits processor: per-row draws after the usual warpers; returns logits allowing only the drawn token."""

    def __init__(self, seeds: list[int | None], temperature: float | None, top_k: int | None, top_p: float | None):
        self.seeds = seeds
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators: list[Any] | None = None
        self._single = 0  # row-merged decoding runs each row alone first, in order

    def _generators(self, device: Any) -> list[Any]:
        import torch

        if self.generators is None:
            self.generators = []
            for seed in self.seeds:
                generator = torch.Generator(device=device)
                generator.manual_seed(seed if seed is not None else secrets.randbits(63))
                self.generators.append(generator)
        return self.generators

    def warp(self, scores: Any) -> Any:
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if self.temperature is not None and self.temperature not in (0.0, 1.0):
            scores = TemperatureLogitsWarper(self.temperature)(None, scores)
        if self.top_k:
            scores = TopKLogitsWarper(top_k=self.top_k)(None, scores)
        if self.top_p is not None and self.top_p < 1.0:
            scores = TopPLogitsWarper(top_p=self.top_p)(None, scores)
        return scores

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generators = self._generators(scores.device)
        if scores.shape[0] == len(generators):
            rows = generators
        else:  # one row at a time (row-merged decoding's first tokens)
            rows = [generators[self._single % len(generators)]]
            self._single += 1
        probs = torch.softmax(self.warp(scores.float()), dim=-1)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(rows)])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen, 0.0)
        return out


def per_row(kwargs: dict[str, Any], batch: Sequence[Request], generation_config: Any) -> dict[str, Any]:
    """Generate kwargs that sample each row from its own generator (unchanged for greedy decoding).

    The warpers' values are the request's, else the model's generation config (what transformers would use);
    transformers' own warpers are then switched off, as RowSampler has applied them.
    """
    if not kwargs.get("do_sample"):
        return kwargs
    from transformers import LogitsProcessorList

    values = {name: _effective(name, kwargs, generation_config) for name in WARPERS}
    sampler = RowSampler([r.decoding.seed for r in batch], **values)
    out = dict(kwargs, temperature=1.0, top_k=0, top_p=1.0)
    processors = LogitsProcessorList(kwargs.get("logits_processor") or [])
    processors.append(sampler)
    out["logits_processor"] = processors
    return out


def _effective(name: str, kwargs: dict[str, Any], generation_config: Any) -> Any:
    """The value generate would use: the call's, else the model's generation config, else transformers' default."""
    for source in (kwargs, vars(generation_config) if generation_config is not None else {}):
        if source.get(name) is not None:
            return source[name]
    from transformers import GenerationConfig

    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
    return defaults.get(name)
