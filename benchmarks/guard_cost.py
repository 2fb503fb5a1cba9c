"""What the fast-path guard costs: a run whose fast paths prove themselves first vs the same run with them taken
as proved, side by side in one process, on the same photos and the same tiny random-weight model.

Run: python benchmarks/guard_cost.py [--images 1000] [--tokens 32] [--batch 8] [--rounds 2] [--exact]

The model is benchmarks/throughput.py's hidden-512 tiny Qwen3.5 under json-captioner (the stand-in scaffold: an
800-token shared prefix, so batches take prefix reuse and row merging). The photos are the shared COCO sample cut
to sizes drawn from a seed, so batches are padded and both prefix reuse (equal lengths) and row merging (mixed)
serve. (g) a fresh engine whose first batch for each path runs the guard's probe; (n) a fresh engine whose guard
is marked verified before it starts (no probe). Rounds alternate g and n; the best round of each is reported,
with the guard's own probe seconds (`Engine.fast_paths()`) beside.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "models"))

from throughput import model, photos  # noqa: E402


def shaped(paths: list[Path], scratch: Path) -> list[Path]:
    """The photos resized to one of a few sizes each (seeded): some batches of one length, most mixed."""
    from PIL import Image

    rng = random.Random(0)
    sizes = [(640, 480), (480, 640), (512, 512), (800, 300), (300, 700), (200, 200)]
    out = []
    for i, path in enumerate(paths):
        target = scratch / f"{i:05}.jpg"
        with Image.open(path) as im:
            im.convert("RGB").resize(rng.choice(sizes)).save(target, quality=90)
        out.append(target)
    return out


def run(folder: str, images: list[Path], tokens: int, batch: int, exact: bool, proved: bool) -> tuple[float, dict]:
    from test_fidelity_json_captioner import STANDIN

    from capmill.captioner import Captioner

    cap = Captioner(
        model=folder,
        profile="json-captioner",
        scaffold=STANDIN,
        decoding={"max_new_tokens": tokens},
        batch_size=batch,
        engine_options={"batch_invariant": exact},
    )
    engine = cap.engine  # loaded before the clock starts
    if proved:
        for state in engine.guard.paths.values():
            if state.state == "unverified":
                state.state = "verified"
    t0 = time.perf_counter()
    records = cap.caption(images)
    seconds = time.perf_counter() - t0
    assert len(records) == len(images)
    paths = cap.fast_paths()
    cap.close()
    return seconds, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--exact", action="store_true", help="also prove --exact (batch_invariant)")
    args = parser.parse_args()
    folder = model("qwen3_5")
    with tempfile.TemporaryDirectory() as tmp:
        found, where = photos(args.images, Path(tmp))
        images = shaped(found, Path(tmp))
        print(f"{args.images} photos ({where}), {args.tokens} new tokens, batch {args.batch}, exact={args.exact}")
        best = {"g": float("inf"), "n": float("inf")}
        probe = 0.0
        for r in range(args.rounds):
            for side in ("g", "n"):
                seconds, paths = run(folder, images, args.tokens, args.batch, args.exact, proved=side == "n")
                best[side] = min(best[side], seconds)
                if side == "g":
                    probe = sum(p["probe_seconds"] for p in paths.values())
                    states = {k: v["state"] for k, v in paths.items()}
                print(f"round {r + 1} {side}: {seconds:.2f} s  ({args.images / seconds:.2f} images/s)")
        print(f"fast paths after (g): {states}")
        print(f"guard probes in (g): {probe:.2f} s = {100 * probe / best['g']:.2f}% of (g)'s run")
        print(f"best (g) {best['g']:.2f} s vs (n) {best['n']:.2f} s: g/n = {best['g'] / best['n']:.4f}")


if __name__ == "__main__":
    main()
