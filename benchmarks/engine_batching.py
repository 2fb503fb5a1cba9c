"""The card's one-image-per-generate loop against capmill's transformers engine, on the same tiny model and photos.

Run: python benchmarks/engine_batching.py [--images 8] [--tokens 64] [--rounds 2]
Builds compute-bound tiny Qwen3.5 (json-captioner) and Qwen2-VL (inkscope-2b) models once (cached in
~/.cache/capmill-bench), runs each contender in turn, round by round (interleaved, same process), checks that
the outputs are identical, and prints images/s and the ratio. The card code is the fidelity tests' literal copy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
SIZES = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=768, image_tokens=64)


def photos(n: int) -> list[Path]:
    shared = ROOT.parent / "shared" / "data" / "coco"
    folder = shared if shared.is_dir() and any(shared.glob("*.jpg")) else ROOT / "tests" / "data" / "coco"
    found = sorted(folder.glob("*.jpg"))
    return (found * (n // len(found) + 1))[:n]


def model(arch: str) -> str:
    from capmill.testing import build_tiny_model

    folder = Path(os.environ.get("CAPMILL_BENCH_CACHE", Path.home() / ".cache" / "capmill-bench")) / f"{arch}-256x4"
    if not (folder / "config.json").exists():
        build_tiny_model(arch, folder, **SIZES)
    return str(folder)


def contenders(profile: str, tokens: int, batch: int):
    from capmill.captioner import Captioner

    if profile == "json-captioner":
        import test_fidelity_json_captioner as card

        card.MAX_NEW_TOKENS = tokens
        path = model("qwen3_5")
        loaded = card.card_load(path)
        cap = Captioner(
            model=path, profile=profile, scaffold=card.STANDIN, decoding={"max_new_tokens": tokens}, batch_size=batch
        )
        return (lambda ps: [card.card_caption(*loaded, image_path=str(p))[1] for p in ps]), cap
    import test_fidelity_inkscope as card

    card.MAX_NEW_TOKENS = tokens
    path = model("qwen2_vl")
    loaded = card.card_load(path)
    cap = Captioner(model=path, profile=profile, decoding={"max_new_tokens": tokens}, batch_size=batch)
    return (lambda ps: [card.card_caption(*loaded, str(p))[1] for p in ps]), cap


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--profiles", default="json-captioner,inkscope-2b")
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"tiny models {SIZES}; {args.images} photos, {args.tokens} new tokens, batch {args.batch}")
    for profile in args.profiles.split(","):
        card_loop, cap = contenders(profile, args.tokens, args.batch)
        ps = photos(args.images)
        card_loop(ps[:1]), cap.caption(ps[:1])  # warm both
        best = {"card": float("inf"), "capmill": float("inf")}
        cpu = {"card": float("inf"), "capmill": float("inf")}
        same = True
        for _ in range(args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            ref = card_loop(ps)
            best["card"], cpu["card"] = (
                min(best["card"], time.perf_counter() - t0),
                min(cpu["card"], time.process_time() - c0),
            )
            t0, c0 = time.perf_counter(), time.process_time()
            got = [r.raw for r in cap.caption(ps)]
            best["capmill"] = min(best["capmill"], time.perf_counter() - t0)
            cpu["capmill"] = min(cpu["capmill"], time.process_time() - c0)
            same = same and got == ref
        cap.close()
        n = len(ps)
        print(f"\n{profile}")
        for name in ("card", "capmill"):
            print(f"  {name:8} {n / best[name]:8.3f} images/s wall  {n / cpu[name]:8.3f} images/CPU-s")
        print(f"  capmill/card: {best['card'] / best['capmill']:.2f}x wall, {cpu['card'] / cpu['capmill']:.2f}x CPU")
        print(f"  identical outputs: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
