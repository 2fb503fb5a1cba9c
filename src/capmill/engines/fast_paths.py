"""The fast paths of the transformers engine, and the guard that lets one serve a model only once it has proved itself.

Every fast path is an alternative to one plain path, the card's own batched `generate` (left-padded, every prompt
computed in full):
- `prefix_cache`: an unpadded batch starts from the stored state of the shared prompt prefix (prefix_cache.py);
- `merge_rows`: a padded batch: each row's prompt from the stored prefix at batch 1, one batched decode (row_merge.py);
- `batch_invariant` (`--exact`): rows computed as they would be alone (batch_invariant.py, exact_attention.py).

The first time a fast path would serve a batch, the guard runs a probe on a few rows of that real batch: the fast path
and its reference each decode a few greedy tokens while a pass-through logits processor records their logits. For
`prefix_cache` and `merge_rows` the reference is the plain padded `generate`: token ids must agree and logits stay
within `tolerance` (relative to the largest logit). For `batch_invariant` the reference is each row alone and the
logits must be equal to the bit. A path that disagrees is switched off for that engine with one warning; its state
and reason are in `Engine.fast_paths()` (summary.json, the server's /healthz and /metrics). Fast paths lean on
transformers' private cache layout, so this check runs on every load, whatever the library version.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

PROBE_TOKENS = 4  # greedy tokens each side decodes
PROBE_ROWS = 2  # rows of the first batch the probe takes: the shortest and the longest (padding is where it breaks)
TOLERANCE = {"float32": 1e-3, "float64": 1e-6}  # largest logit difference / largest logit; other dtypes: 5e-2
HALF_TOLERANCE = 5e-2


@dataclass
class PathState:
    state: str = "unverified"  # unverified | verified | disabled | off (not asked for)
    reason: str = ""
    max_logit_diff: float | None = None
    probe_rows: int = 0
    probe_tokens: int = 0
    probe_seconds: float = 0.0


class FastPathGuard:
    """Which fast paths may serve this engine's model, each proved on its first real batch."""

    def __init__(self, requested: dict[str, bool], dtype: str):
        self.paths = {name: PathState() if on else PathState(state="off") for name, on in requested.items()}
        self.tolerance = TOLERANCE.get(dtype, HALF_TOLERANCE)

    def usable(self, name: str) -> bool:
        return self.paths[name].state in ("unverified", "verified")

    def pending(self, name: str) -> bool:
        return self.paths[name].state == "unverified"

    def settle(self, name: str, fast: Recorded, reference: Recorded, *, bitwise: bool) -> bool:
        """Compare a probe's two sides; record and return whether the fast path may serve."""
        state = self.paths[name]
        state.probe_rows, state.probe_tokens = fast.ids.shape[0], fast.ids.shape[1]
        reason = ""
        diff = None
        if fast.ids.shape != reference.ids.shape or not bool((fast.ids == reference.ids).all()):
            rows = [i for i in range(min(fast.ids.shape[0], reference.ids.shape[0])) if not _same(fast, reference, i)]
            reason = f"token ids differ from the {reference.what} in probe rows {rows or 'all'}"
        if fast.logits is not None and reference.logits is not None and fast.logits.shape == reference.logits.shape:
            gap = (fast.logits - reference.logits).abs()
            gap = gap[gap.isfinite()]
            diff = float(gap.max()) if gap.numel() else 0.0
            scale = max(1.0, float(reference.logits[reference.logits.isfinite()].abs().max()))
            state.max_logit_diff = diff
            if not reason and (diff != 0.0 if bitwise else diff > self.tolerance * scale):
                limit = "0 (bit-equal)" if bitwise else f"{self.tolerance:g} x {scale:.3g}"
                reason = f"logits differ from the {reference.what} by {diff:.3g} (allowed {limit})"
        if reason:
            state.state, state.reason = "disabled", reason
            instead = "each row is computed alone" if bitwise else "the plain path serves instead"
            log.warning("fast path %s switched off for this model: %s; %s", name, reason, instead)
            return False
        state.state = "verified"
        state.reason = f"equal to the {reference.what} on {state.probe_rows} rows x {state.probe_tokens} tokens"
        return True

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(state) for name, state in self.paths.items()}


@dataclass
class Recorded:
    """One side of a probe: generated ids (rows x tokens) and the raw logits of each step (rows x tokens x vocab)."""

    ids: Any
    logits: Any
    what: str = "plain path"


def _same(a: Recorded, b: Recorded, row: int) -> bool:
    return bool((a.ids[row] == b.ids[row]).all())


class LogitsRecorder:
    """A pass-through logits processor that keeps every step's scores (a batch step, or one row's step)."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps.append(scores.detach().float().clone())
        return scores

    def stacked(self, rows: int, tokens: int) -> Any:
        """(rows, tokens, vocab): row-at-a-time steps (row_merge's first token) are joined into batch steps."""
        import torch

        steps, k = [], 0
        while k < len(self.steps):
            step = self.steps[k]
            if step.shape[0] == rows:
                steps.append(step)
                k += 1
            else:  # one row at a time: the next `rows` entries form one step
                steps.append(torch.cat(self.steps[k : k + rows]))
                k += rows
        return torch.stack(steps[:tokens], dim=1)


def probe_rows(lengths: list[int]) -> list[int]:
    """Indices of at most PROBE_ROWS rows: the shortest, the longest and evenly between (sorted by length)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if len(order) <= PROBE_ROWS:
        return order
    picks = {order[round(k * (len(order) - 1) / (PROBE_ROWS - 1))] for k in range(PROBE_ROWS)}
    return sorted(picks, key=lambda i: lengths[i])


def prove(engine: Any, name: str, path: str, prefix: int, rows: list[Any], batch: list[Any], decoding: Any) -> bool:
    """Probe fast path `name` on a few rows of this real batch against its reference; settle it in the guard.

    `engine` is a TransformersEngine (its `_run_path`, `_choose_path`, `_on_device`); `path`/`prefix` are what the
    whole batch would take, and the probe rows take the same.
    """
    import time

    from capmill.engines.prefix_cache import collate

    t0 = time.perf_counter()
    decoding = decoding.merged(stop=(), max_new_tokens=PROBE_TOKENS)  # no stop string ends a row early
    picked = probe_rows([r["input_ids"].shape[1] for r in rows])
    sub = [rows[i] for i in picked]
    inputs = engine._on_device(collate(sub, engine.tokenizer.pad_token_id))
    fast = _side(engine, path, prefix, inputs, sub, decoding, "fast path")
    if name == "batch_invariant":  # the reference: each row alone, as one-image-at-a-time captioning computes it
        alone = []
        for i in picked:
            row = engine._on_device(collate([rows[i]], engine.tokenizer.pad_token_id))
            row_path, row_prefix = engine._choose_path(row, [rows[i]], [batch[i]], decoding)
            alone.append(_side(engine, row_path, row_prefix, row, [rows[i]], decoding, "rows alone"))
        reference = _join(alone)
    else:
        reference = _side(engine, "plain", 0, inputs, sub, decoding, "plain padded generate")
    ok = engine.guard.settle(name, fast, reference, bitwise=name == "batch_invariant")
    engine.guard.paths[name].probe_seconds = round(time.perf_counter() - t0, 4)
    return ok


def _side(engine: Any, path: str, prefix: int, inputs: Any, rows: list[Any], decoding: Any, what: str) -> Recorded:
    import torch
    from transformers import LogitsProcessorList

    recorder = LogitsRecorder()
    kwargs = {
        "max_new_tokens": PROBE_TOKENS,
        "do_sample": False,
        "pad_token_id": engine.tokenizer.pad_token_id,
        "logits_processor": LogitsProcessorList([recorder]),
    }
    out = engine._run_path(path, prefix, inputs, rows, kwargs, decoding)
    prompt = inputs["input_ids"]
    if out.shape[1] >= prompt.shape[1] and torch.equal(out[:, : prompt.shape[1]], prompt):
        out = out[:, prompt.shape[1] :]  # decoder-only: the prompt comes back first
    steps = len(recorder.steps) if path != "merge" else len(recorder.steps) - len(rows) + 1
    tokens = min(out.shape[1], steps)
    logits = recorder.stacked(len(rows), tokens) if tokens else None
    return Recorded(ids=out[:, -tokens:] if tokens else out[:, :0], logits=logits, what=what)


def _join(sides: list[Recorded]) -> Recorded:
    import torch

    width = min(s.ids.shape[1] for s in sides)
    logits = None
    if all(s.logits is not None for s in sides):
        logits = torch.cat([s.logits[:, :width] for s in sides])
    return Recorded(ids=torch.cat([s.ids[:, :width] for s in sides]), logits=logits, what=sides[0].what)
