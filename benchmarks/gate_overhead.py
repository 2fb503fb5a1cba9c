"""What the quality gate costs: a run with no gate, with the gate where nothing fails, and with 10% retried.

All on a tiny random Qwen2-VL (greedy, 16 new tokens, batch 8) over real COCO photos of many sizes, through
`Captioner.caption` and `GatedCaptioner.caption`, side by side in one process:

  (a) no gate
  (b) gate, checks only (empty, refusal, structured output; nothing fails)
  (c) gate + CLIPScore on a tiny random CLIP (the score is a column; threshold 0: nothing fails)
  (d) as (c), the threshold at the 10th percentile of (c)'s scores: about 10% of the items fail and are retried
      with the default first retry (sampling, repetition penalty)

Loop and truncation checks are off: a random tiny model never ends and loops often, so they would fail most
items. Each configuration is timed `--rounds` times, interleaved; the best round counts (a shared machine).

    python benchmarks/gate_overhead.py [--images 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco" / "val2017"
FALLBACK = Path(__file__).parents[1] / "tests" / "data" / "coco"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from capmill.captioner import Captioner
    from capmill.quality.gated import GatedCaptioner, gate_summary
    from capmill.quality.policy import Checks, GatePolicy, Scorer
    from capmill.testing import build_tiny_model
    from capmill.testing.clip import build_tiny_clip

    folder = COCO if COCO.is_dir() else FALLBACK
    photos = [str(p) for p in sorted(folder.glob("*.jpg"))][: args.images]
    tmp = Path(tempfile.mkdtemp(prefix="capmill-gate-bench-"))
    model = build_tiny_model("qwen2_vl", tmp / "qwen2_vl")
    clip = build_tiny_clip(tmp / "clip", seed=7)  # a seed whose cosines are positive here, so scores spread above 0
    kwargs = {"model": str(model), "profile": "inkscope-2b", "decoding": {"max_new_tokens": 16}, "batch_size": 8}
    checks = {"repetition_loop": False, "truncated": False}

    def policy(scorer: bool, threshold: float | None) -> GatePolicy:
        return GatePolicy(
            checks=Checks(**checks, min_clip_score=threshold),
            scorer=Scorer(model=str(clip), batch_size=16) if scorer else None,
            stop_repetition=False,
        )

    captioners = {
        "a": Captioner(**kwargs),
        "b": GatedCaptioner(gate=policy(False, None), **kwargs),
        "c": GatedCaptioner(gate=policy(True, 0.0), **kwargs),
    }
    for c in captioners.values():
        c.caption(photos[:8])  # load the model (and the scorer) outside the timing
    scores = sorted(r.quality["clip_score"] for r in captioners["c"].caption(photos))
    k = max(1, round(len(scores) / 10))  # about a tenth of the items score below the threshold
    threshold = (scores[k - 1] + scores[k]) / 2 if scores[k] > scores[k - 1] else scores[k - 1] + 1e-6
    captioners["d"] = GatedCaptioner(gate=policy(True, threshold), **kwargs)
    captioners["d"].caption(photos[:8])

    best: dict[str, float] = {}
    outputs: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, captioner in captioners.items():
            start = time.perf_counter()
            records = captioner.caption(photos)
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, elapsed), elapsed)
            outputs[name] = records
    print(f"{len(photos)} photos from {folder}, tiny qwen2_vl, 16 new tokens, batch 8, best of {args.rounds}")
    for name, label in (
        ("a", "no gate"),
        ("b", "gate, checks only"),
        ("c", "gate + CLIPScore, none fail"),
        ("d", f"gate + CLIPScore < {threshold:.3f}"),
    ):
        print(f"  ({name}) {label:32s} {len(photos) / best[name]:7.2f} images/s  ({best[name]:.2f} s)")
    summary = gate_summary(outputs["d"])
    print(f"  b/a {best['b'] / best['a']:.3f}   c/a {best['c'] / best['a']:.3f}   d/a {best['d'] / best['a']:.3f}")
    print(f"  (b), (c) retried: {gate_summary(outputs['b'])['retried']}, {gate_summary(outputs['c'])['retried']}")
    print(
        f"  (d) retried {summary['retried']}/{len(photos)} ({summary['retried'] / len(photos):.0%}), "
        f"fixed {summary['fixed']}, retry attempts {summary['retry_attempts']}"
    )
    same = all(r.raw == s.raw for r, s in zip(outputs["a"], outputs["b"], strict=True))
    print(f"  first tries identical to the ungated run: {same}")
    for name in "bcd":  # measured inside the one process, so a busy machine slows both sides alike
        gate = captioners[name].gate
        print(
            f"  ({name}) the gate's own time / its engine time: {gate.seconds:.2f} s / {gate.engine_seconds:.2f} s "
            f"= {gate.seconds / gate.engine_seconds:.2%}"
        )
    from capmill.quality.gate import Gate
    from capmill.records import Generation, Request

    gate = Gate(policy(False, None))
    requests = [Request(item_id=r.id, messages=[], decoding=captioners["a"].decoding) for r in outputs["a"]]
    generations = [Generation(text=r.raw or "", completion_tokens=16) for r in outputs["a"]]
    start = time.perf_counter()
    for _ in range(20):
        gate.check(requests, generations)
    per_item = (time.perf_counter() - start) / 20 / len(requests)
    print(f"  the checks alone: {per_item * 1e6:.0f} us per caption")


if __name__ == "__main__":
    main()
