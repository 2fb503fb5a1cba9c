"""The transformers engine: a hub id or local folder, batched with left padding, decoding as the profile says.

Each family encodes a batch exactly as its card's code encodes one input; this engine adds what the card's
loop lacks: many inputs per `generate`, sorted by length so padding stays small, stop strings handled by
transformers' vectorised StopStringCriteria (no per-token Python), and timings and token counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from capmill.engines import stop_point, streaming
from capmill.engines.base import Engine, EngineOptions
from capmill.engines.batch_invariant import make_batch_invariant
from capmill.engines.bounded import LRUDict
from capmill.engines.fast_paths import FastPathGuard, prove
from capmill.engines.generate_call import FirstTokenClock, completion, generate_kwargs, media_token_ids
from capmill.engines.isolate import failed, run_isolating
from capmill.engines.prefix_cache import (
    MIN_PREFIX,
    PrefixStore,
    collate,
    equal_length_batches,
    shared_prefix_length,
)
from capmill.engines.row_merge import cache_kwarg, generate_merged, reset_rope_state
from capmill.engines.transformers_loading import TransformersOptions, load_model, resolve_device, resolve_dtype
from capmill.models.families import get_family
from capmill.models.resolve import read_model_config, resolve_family
from capmill.quality.repetition import add_repetition_stop
from capmill.records import Decoding, Generation, Request

log = logging.getLogger(__name__)
STOP_CACHE_SIZE = 32  # stop matchers kept (each walks the vocabulary to build: ~65 ms for Qwen's)


class TransformersEngine(Engine):
    """Runs any capmill family on transformers; see TransformersOptions for the knobs."""

    name: ClassVar[str] = "transformers"
    supports_video: ClassVar[bool] = True
    supports_constrained: ClassVar[bool] = True
    Options: ClassVar[type[EngineOptions]] = TransformersOptions

    @classmethod
    def uses_host_cpu(cls, options: dict[str, Any]) -> bool:
        return resolve_device(str(options.get("device") or "auto")).type == "cpu"

    def __init__(self, model: str, profile: Any, options: Any = None):
        super().__init__(model, profile, options)
        import torch

        opts: TransformersOptions = self.options  # type: ignore[assignment]
        if opts.threads:
            torch.set_num_threads(opts.threads)
        config = read_model_config(model)
        self.family_name = resolve_family(model, profile, config)
        self.family = get_family(self.family_name)
        self.family.check_config(config, model)
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype, self.device)
        self.processor = self.family.load_processor(model, trust_remote_code=opts.trust_remote_code)
        self.tokenizer = self.family.tokenizer(self.processor)
        self.model, self.attn_implementation = load_model(self.family, model, opts, self.device, self.dtype)
        if opts.batch_invariant:
            make_batch_invariant(self.model)
        self.prefixes = PrefixStore()
        self._encoder_decoder = (
            bool(getattr(self.model.config, "is_encoder_decoder", False)) or self.family.encoder_decoder
        )
        reuse = opts.prefix_cache and not self._encoder_decoder
        self.guard = FastPathGuard(
            {"prefix_cache": reuse, "merge_rows": reuse and opts.merge_rows, "batch_invariant": opts.batch_invariant},
            dtype=str(self.dtype).replace("torch.", ""),
        )
        self._cache_kwarg = cache_kwarg(self.model)
        self._media_ids = media_token_ids(self.processor, self.tokenizer)
        self._seen_stop_warning = False
        self._stop_cache: dict[tuple[str, ...], Any] = LRUDict(STOP_CACHE_SIZE)  # stop lists come from clients

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            family=self.family_name,
            device=str(self.device),
            dtype=str(self.dtype).replace("torch.", ""),
            attn_implementation=self.attn_implementation,
        )
        return out

    # ---- generation ----
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        encoded: dict[int, tuple[Any, float]] = {}
        for i, request in enumerate(requests):  # one encoding per request: its exact length, its own failure
            t0 = time.perf_counter()
            try:
                encoded[i] = (self.family.encode(self.processor, [request]), time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - becomes the item's error
                results[i] = failed(exc)
        for n, indices in enumerate(self._batches(requests, encoded)):
            if n and stop_point.asked():  # a stop was asked: the batch in progress is done, the rest wait
                for i in indices:
                    results[i] = Generation(text="", finish_reason=stop_point.NOT_RUN)
                continue
            generations = run_isolating(
                lambda part: self._generate_batch([requests[i] for i in part], [encoded[i] for i in part]), indices
            )
            for i, generation in zip(indices, generations, strict=True):
                results[i] = generation
        return [g for g in results if g is not None]

    def _batches(self, requests: Sequence[Request], encoded: dict[int, tuple[Any, float]]) -> list[list[int]]:
        """Sub-batches that share what one generate call must share, sorted by token length.

        Sorting puts equal lengths side by side: such batches need no padding and reuse the shared prefix.
        """
        groups: dict[Any, list[int]] = {}
        for i in encoded:
            r = requests[i]
            key = (r.decoding, _freeze(r.tools), _freeze(r.chat_kwargs), bool(r.videos))
            groups.setdefault(key, []).append(i)
        size = max(1, self.options.max_batch_size)  # type: ignore[attr-defined]
        out = []
        for indices in groups.values():
            if (
                self.options.split_by_length  # type: ignore[attr-defined]
                and not self.guard.usable("merge_rows")
                and self._reusable_prefix([encoded[i][0] for i in indices])
            ):
                lengths = {i: encoded[i][0]["input_ids"].shape[1] for i in indices}
                out.extend(equal_length_batches(indices, lengths, size))
                continue
            if self.options.sort_by_length:  # type: ignore[attr-defined]
                indices = sorted(indices, key=lambda i: encoded[i][0]["input_ids"].shape[1])
            out.extend(indices[k : k + size] for k in range(0, len(indices), size))
        return out

    def _generate_batch(self, batch: list[Request], singles: list[tuple[Any, float]]) -> list[Generation]:
        import torch

        t0 = time.perf_counter()
        inputs = self._on_device(collate([s for s, _ in singles], self.tokenizer.pad_token_id))
        decoding = batch[0].decoding
        rows = [s for s, _ in singles]
        path, prefix = self._choose_path(inputs, rows, batch, decoding)
        if self._prove(path, prefix, rows, batch, decoding):  # a fast path stepped aside: choose again
            path, prefix = self._choose_path(inputs, rows, batch, decoding)
        if len(batch) > 1 and self.guard.paths["batch_invariant"].state == "disabled":
            # --exact could not be proved for batches: each row alone is the one computation that is exact
            return [
                g
                for request, single in zip(batch, singles, strict=True)
                for g in self._generate_batch([request], [single])
            ]
        kwargs = self._generate_kwargs(decoding, batch)
        # rows that ask for it (the quality gate) end at a repetition loop instead of spending their token budget
        kwargs = add_repetition_stop(kwargs, batch, inputs["input_ids"].shape[1])
        t_prefix = time.perf_counter()
        clock = FirstTokenClock()
        # listening rows get their text as it is generated (engines/streaming.py); seeds live in the per-row
        # generators of engines/row_sampling.py, so nothing reseeds the process here
        kwargs["streamer"] = streaming.row_streamer(
            clock, batch, inputs["input_ids"].shape[1], lambda ids: self.family.decode(self.processor, ids)
        )
        out = self._run_path(path, prefix, inputs, rows, kwargs, decoding, on_first=clock.put_first)
        t2 = time.perf_counter()
        input_ids = inputs["input_ids"]
        new = out
        if out.shape[1] >= input_ids.shape[1] and torch.equal(out[:, : input_ids.shape[1]], input_ids):
            new = out[:, input_ids.shape[1] :]  # decoder-only: the prompt comes back first
        texts = self.family.decode(self.processor, new)
        start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if new is out and start is not None and new.shape[1] and bool((new[:, 0] == start).all()):
            new = new[:, 1:]  # encoder-decoder (BLIP-2 T5): the decoder start token is not generated text
        t3 = time.perf_counter()
        n = len(batch)
        mask = inputs.get("attention_mask")
        prompt_lens = mask.sum(dim=1).tolist() if mask is not None else [input_ids.shape[1]] * n
        encode_time = sum(t for _, t in singles)
        timings = {
            "preprocess": (encode_time + t_prefix - t0) / n,
            "prefill": ((clock.first or t2) - t_prefix) / n,  # the prefix (when computed now) and the prompt pass
            "generate": (t2 - (clock.first or t2)) / n,  # decoding after the first token
            "decode": (t3 - t2) / n,
            "batch_size": n,
            "prefix_tokens": prefix,
        }
        generations = []
        for row, text, prompt_len in zip(new.tolist(), texts, prompt_lens, strict=True):
            count, reason = self._completion(row, text, decoding)
            generations.append(
                Generation(
                    text=text,
                    prompt_tokens=int(prompt_len),
                    completion_tokens=count,
                    finish_reason=reason,
                    timings=dict(timings),
                )
            )
        return generations

    # ---- fast paths (fast_paths.py): chosen per batch, each proved on its first batch ----
    def _choose_path(self, inputs: Any, rows: list[Any], batch: list[Request], decoding: Decoding) -> tuple[str, int]:
        """("plain" | "prefix" | "merge", prefix tokens) for this batch, among the paths still usable."""
        if self.guard.usable("prefix_cache"):
            prefix = shared_prefix_length(inputs, self._media_ids)
            if prefix:
                return "prefix", prefix
        mask = inputs.get("attention_mask")
        if (
            self.guard.usable("merge_rows")
            and len(batch) > 1
            and mask is not None
            and not bool(mask.all())
            and decoding.max_new_tokens >= 2
            and not any(r.constraint or r.videos for r in batch)
            and self._reusable_prefix(rows)
        ):
            prefix = shared_prefix_length(collate(rows[:1], self.tokenizer.pad_token_id), self._media_ids)
            if prefix:
                return "merge", prefix
        return "plain", 0

    def _run_path(
        self,
        path: str,
        prefix: int,
        inputs: Any,
        rows: list[Any],
        kwargs: dict[str, Any],
        decoding: Decoding,
        on_first: Any = None,
    ) -> Any:
        """Token ids (rows x (prompt +) new tokens) of one generate over the batch, by the given path."""
        import torch

        with torch.inference_mode():
            if path == "merge":  # padded, but the rows share a long prefix: rows from the prefix, one batched decode
                return generate_merged(
                    self.model,
                    self.prefixes,
                    [self._on_device(r) for r in rows],
                    prefix,
                    kwargs,
                    self.tokenizer.pad_token_id,
                    lambda t: self._ends_at_first(t, decoding),
                    on_first=on_first,
                    cache_kwarg=self._cache_kwarg,
                )
            if path == "prefix":  # unpadded: every row starts from the stored prefix state
                kwargs = {
                    **kwargs,
                    self._cache_kwarg: self.prefixes.cache_for(
                        self.model, inputs["input_ids"][:1, :prefix], inputs["input_ids"].shape[0]
                    ),
                }
            reset_rope_state(self.model)
            return self.model.generate(**inputs, **kwargs)

    def _prove(self, path: str, prefix: int, rows: list[Any], batch: list[Request], decoding: Decoding) -> bool:
        """Probe the fast paths this batch would take that have not proved themselves yet; True if one failed."""
        failed = False
        names = {"prefix": ["prefix_cache"], "merge": ["merge_rows"], "plain": []}[path]
        if len(batch) > 1:
            names.append("batch_invariant")
        for name in names:
            if not self.guard.pending(name):
                continue
            failed |= not prove(self, name, path, prefix, rows, batch, decoding)
        return failed

    def fast_paths(self) -> dict[str, dict[str, Any]]:
        return self.guard.report()

    def _reusable_prefix(self, singles: list[Any]) -> bool:
        """Whether these rows share a prefix long enough to reuse (else splitting by length only costs batch size)."""
        import torch

        if not self.guard.usable("prefix_cache"):
            return False
        first = singles[0]["input_ids"][0]
        media = torch.isin(first, torch.tensor(sorted(self._media_ids), dtype=first.dtype)) if self._media_ids else None
        n = int(media.nonzero()[0]) if media is not None and bool(media.any()) else first.shape[0] - 1
        if n < MIN_PREFIX:
            return False
        return all(s["input_ids"].shape[1] > n and torch.equal(s["input_ids"][0, :n], first[:n]) for s in singles)

    def _on_device(self, single: Any) -> Any:
        import torch

        single = single.to(self.device)
        for key, value in single.items():
            if torch.is_tensor(value) and value.is_floating_point():
                single[key] = value.to(self.dtype)
        return single

    def _ends_at_first(self, token: int, decoding: Decoding) -> bool:
        eos = self.model.generation_config.eos_token_id
        if token in (eos if isinstance(eos, list) else [eos]):
            return True
        text = self.tokenizer.decode([token])
        return any(text.endswith(stop) for stop in decoding.stop)

    def _generate_kwargs(self, decoding: Decoding, batch: list[Request]) -> dict[str, Any]:
        return generate_kwargs(decoding, batch, self.tokenizer, self.model.generation_config, self._stop_cache)

    def _completion(self, row: list[int], text: str, decoding: Decoding) -> tuple[int, str]:
        return completion(row, text, decoding, self.model.generation_config, self.tokenizer.pad_token_id)

    def close(self) -> None:
        self.model = None
        self.processor = None


def _freeze(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)
