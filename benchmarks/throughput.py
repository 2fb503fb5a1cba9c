"""Throughput: the card's one-image loop (a) vs capmill's engine (b) vs the whole `capmill caption` pipeline (c).

Run: python benchmarks/throughput.py [--images 24] [--tokens 64] [--rounds 2] [--batch 8] [--workers N] [--sweep]

One process, the contenders interleaved round by round on the same photos and the same tiny random-weight models
(a Qwen3.5 under json-captioner with the stand-in scaffold of tests/models/data, a Qwen2-VL under inkscope-2b,
hidden size 512 by default so arithmetic outweighs Python overhead; built once, cached in ~/.cache/capmill-bench).
Greedy decoding; the outputs are compared photo by photo. (a) is the card's usage code as the fidelity tests copy it
literally; (b) `Captioner.caption` (transformers engine, default options); (c) `capmill caption FOLDER --out
x.parquet` (default options) through the CLI's own `main` in this process, so the weights load again each round: that load is timed by the run itself (summary.json time_s.load) and taken off its wall time.
(b) starts each round with an empty prefix store, so (b) and (c) both pay the scaffold's one prompt pass.
Also timed: (b) with batch-invariant decoding (`--exact`), and how many of its outputs equal (a)'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))
SIZES = dict(hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=1536, image_tokens=64)
SHARED = ROOT.parent / "shared" / "data" / "coco"


def photos(n: int, scratch: Path) -> tuple[list[Path], str]:
    """n real photos (the shared COCO sample, else tests/data/coco), or generated ones when neither is here."""
    found = sorted(SHARED.glob("*2017/*.jpg")) or sorted((ROOT / "tests" / "data" / "coco").glob("*.jpg"))
    where = str(found[0].parent.parent if found and found[0].parent.parent == SHARED else (found or [""])[0])
    if not found:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(n):
            h, w = (480, 640) if i % 3 else (640, 480)
            grad = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :]
            pixels = (grad + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(scratch / f"gen_{i:03}.jpg", quality=90)
        found, where = sorted(scratch.glob("gen_*.jpg")), "generated (no COCO photos here)"
    elif "shared" not in where:
        where = "tests/data/coco"
    chosen = (found * (n // len(found) + 1))[:n]
    if len(set(chosen)) < len(chosen):
        where += f" (repeated to {n})"
    return chosen, where


def model(arch: str) -> str:
    from capmill.testing import build_tiny_model

    cache = Path(os.environ.get("CAPMILL_BENCH_CACHE", Path.home() / ".cache" / "capmill-bench"))
    folder = cache / f"{arch}-{SIZES['hidden_size']}x{SIZES['num_layers']}"
    if not (folder / "config.json").exists():
        build_tiny_model(arch, folder, **SIZES)
    return str(folder)


class Contenders:
    """The three ways to caption the same photos with the same model and decoding."""

    def __init__(self, profile: str, tokens: int, batch: int, workers: int, engine_options: dict, scratch: Path):
        from capmill.captioner import Captioner

        self.profile, self.tokens, self.batch, self.workers, self.scratch = profile, tokens, batch, workers, scratch
        self.engine_options = engine_options
        if profile == "json-captioner":
            import test_fidelity_json_captioner as card

            self.path, self.scaffold = model("qwen3_5"), card.STANDIN
            loaded = card.card_load(self.path)
            self._card = lambda p: card.card_caption(*loaded, image_path=str(p))[1]
        else:
            import test_fidelity_inkscope as card

            self.path, self.scaffold = model("qwen2_vl"), None
            loaded = card.card_load(self.path)
            self._card = lambda p: card.card_caption(*loaded, str(p))[1]
        card.MAX_NEW_TOKENS = tokens  # the card's snippet reads the module global
        extra = {"scaffold": self.scaffold} if self.scaffold else {}
        self.caps = {
            exact: Captioner(
                model=self.path,
                profile=profile,
                decoding={"max_new_tokens": tokens},
                batch_size=batch,
                engine_options={"max_batch_size": batch, "batch_invariant": exact, **engine_options},
                **extra,
            )
            for exact in (True, False)
        }
        self.cap = self.caps[False]
        for cap in self.caps.values():
            cap.engine  # noqa: B018 - load now, not inside the first timed round

    def card(self, ps: list[Path]) -> list[str]:
        return [self._card(p) for p in ps]

    def engine(self, ps: list[Path], exact: bool = False) -> list[str]:
        # a cold prefix store, as in (c)'s fresh run: the scaffold's one-off prompt pass is paid in both
        cap = self.caps[exact]
        cap.engine.prefixes.clear()
        return [r.raw for r in cap.caption(ps)]

    def pipeline(self, ps: list[Path]) -> tuple[list[str], float, dict]:
        """`capmill caption folder --out x.parquet`; returns outputs in `ps` order, seconds less load, summary."""
        import pyarrow.parquet as pq

        from capmill.cli.main import main

        folder = self.scratch / f"in-{self.profile}-{len(ps)}"
        if not folder.exists():
            folder.mkdir()
            for i, p in enumerate(ps):  # copies, numbered, so a repeated photo is its own input
                shutil.copyfile(p, folder / f"{i:04}_{p.name}")
        out = self.scratch / f"out-{self.profile}.parquet"
        shutil.rmtree(f"{out}.capmill", ignore_errors=True)
        out.unlink(missing_ok=True)
        argv = ["caption", str(folder), "--model", self.path, "--profile", self.profile, "--greedy"]
        argv += ["--max-new-tokens", str(self.tokens), "--batch-size", str(self.batch)]
        argv += ["--workers", str(self.workers)] if self.workers is not None else []
        argv += ["--out", str(out), "--quiet"] + (["--scaffold", str(self.scaffold)] if self.scaffold else [])
        t0 = time.perf_counter()
        code = main(argv)
        wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"capmill caption exited {code}")
        summary = json.loads((Path(f"{out}.capmill") / "summary.json").read_text())["session"]
        rows = pq.read_table(out).to_pylist()
        by_name = {Path(r["source"]).name: r["raw"] for r in rows}
        texts = [by_name.get(f"{i:04}_{p.name}") for i, p in enumerate(ps)]
        return texts, wall - summary["time_s"]["load"], summary

    def close(self) -> None:
        for cap in self.caps.values():
            cap.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="decode processes of (c) (default: the CLI's)")
    parser.add_argument("--profiles", default="json-captioner,inkscope-2b")
    parser.add_argument("--hidden", type=int, default=SIZES["hidden_size"], help="tiny models' hidden size")
    parser.add_argument("--layers", type=int, default=SIZES["num_layers"], help="tiny models' decoder layers")
    parser.add_argument("--no-prefix-cache", action="store_true", help="(b) and its ratio without prefix reuse")
    parser.add_argument("--sweep", action="store_true", help="only (b), under each batch size and prefix setting")
    args = parser.parse_args()
    SIZES.update(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=3 * args.hidden)
    import torch

    engine_options = {"prefix_cache": False} if args.no_prefix_cache else {}
    scratch = Path(tempfile.mkdtemp(prefix="capmill-throughput-"))
    try:
        ps, where = photos(args.images, scratch)
        print(
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(f"tiny models {SIZES}")
        print(
            f"{len(ps)} photos from {where}; {args.tokens} new tokens (greedy), batch {args.batch}, "
            f"(c) decode workers {'the CLI default' if args.workers is None else args.workers}, engine options {engine_options or 'default'}"
        )
        for profile in args.profiles.split(","):
            if args.sweep:
                sweep(profile, ps, args, scratch)
            else:
                run_profile(profile, ps, args, engine_options, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def sweep(profile: str, ps: list[Path], args, scratch: Path) -> None:
    """The means, measured: (b) with each engine setting, interleaved round by round; outputs must not change."""
    from capmill.captioner import Captioner

    variants = {
        f"batch {b}, {name}": (b, opts)
        for b in (8, 16)
        for name, opts in (
            ("no prefix reuse (padded batches)", {"prefix_cache": False}),
            ("prefix reuse in unpadded batches only", {"merge_rows": False, "split_by_length": False}),
            ("... + batches cut at length boundaries", {"merge_rows": False}),
            ("prefix reuse in every batch (row_merge, default)", {}),
        )
    }
    arch = "qwen3_5" if profile == "json-captioner" else "qwen2_vl"
    path = model(arch)
    import test_fidelity_json_captioner as card

    extra = {"scaffold": card.STANDIN} if profile == "json-captioner" else {}
    caps = {
        name: Captioner(
            model=path,
            profile=profile,
            decoding={"max_new_tokens": args.tokens},
            batch_size=b,
            engine_options={"max_batch_size": b, **opts},
            **extra,
        )
        for name, (b, opts) in variants.items()
    }
    best = dict.fromkeys(caps, float("inf"))
    outputs: dict[str, list[str]] = {}
    for cap in caps.values():
        cap.caption(ps[:1])  # load and warm
    for _ in range(args.rounds):
        for name, cap in caps.items():
            t0 = time.perf_counter()
            outputs[name] = [r.raw for r in cap.caption(ps)]
            best[name] = min(best[name], time.perf_counter() - t0)
    first = next(iter(outputs.values()))
    print(f"\n{profile}: engine settings, {len(ps)} photos, best of {args.rounds} rounds")
    for name in caps:
        same = "same outputs" if outputs[name] == first else "OUTPUTS DIFFER"
        print(f"  {name:60} {len(ps) / best[name]:7.3f} images/s  {same}")
        caps[name].close()


def run_profile(profile: str, ps: list[Path], args, engine_options: dict, scratch: Path) -> None:
    c = Contenders(profile, args.tokens, args.batch, args.workers, engine_options, scratch)
    # warm every path (first-call allocations; (c): the imports of the CLI, Parquet and the run folder)
    c.card(ps[:1]), c.engine(ps[:1]), c.engine(ps[:1], exact=True), c.pipeline(ps[:2])
    best = {"a": float("inf"), "b": float("inf"), "c": float("inf"), "exact": float("inf")}
    # CPU seconds of this process (the machine is shared: wall time is what we got of it)
    cpu = {k: v for k, v in best.items() if k != "exact"}
    same, summary, load = True, {}, []
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        ref = c.card(ps)
        best["a"], cpu["a"] = min(best["a"], time.perf_counter() - t0), min(cpu["a"], time.process_time() - c0)
        t0 = time.perf_counter()
        got_exact = c.engine(ps, exact=True)
        best["exact"] = min(best["exact"], time.perf_counter() - t0)
        exact_same = sum(x == y for x, y in zip(ref, got_exact, strict=True))
        t0, c0 = time.perf_counter(), time.process_time()
        got_b = c.engine(ps)
        best["b"], cpu["b"] = min(best["b"], time.perf_counter() - t0), min(cpu["b"], time.process_time() - c0)
        c0 = time.process_time()
        got_c, seconds, summary = c.pipeline(ps)
        best["c"] = min(best["c"], seconds)
        cpu["c"] = min(cpu["c"], time.process_time() - c0)  # includes the load; decode workers not counted
        load.append(summary["time_s"]["load"])
        for name, got in (("b", got_b), ("c", got_c)):
            diff = [i for i, (x, y) in enumerate(zip(ref, got, strict=True)) if x != y]
            if diff:
                same = False
                print(f"  MISMATCH {name} vs a at {len(diff)} photos, first {ps[diff[0]].name}:")
                print(f"    a: {ref[diff[0]]!r}\n    {name}: {got[diff[0]]!r}")
    c.close()
    n = len(ps)
    rate = {k: n / v for k, v in best.items()}
    print(f"\n{profile} ({Path(c.path).name}), best of {args.rounds} rounds")
    print(f"  (a) card loop, one image per generate   {rate['a']:8.3f} images/s  ({best['a']:.1f} s)")
    print(f"  (b) capmill engine (Captioner.caption)  {rate['b']:8.3f} images/s  ({best['b']:.1f} s)")
    print(
        f"  (c) capmill caption folder -> parquet    {rate['c']:8.3f} images/s  ({best['c']:.1f} s, "
        f"model load {', '.join(f'{x:.1f}' for x in load)} s taken off)"
    )
    crate = {k: n / v for k, v in cpu.items()}
    print(
        f"  per CPU-second of this process: a {crate['a']:.3f}, b {crate['b']:.3f}, c {crate['c']:.3f} images; "
        f"b/a {crate['b'] / crate['a']:.2f}x, c/b {crate['c'] / crate['b']:.3f} (c's CPU includes its model load)"
    )
    print(f"  b/a {rate['b'] / rate['a']:.2f}x   c/a {rate['c'] / rate['a']:.2f}x   c/b {rate['c'] / rate['b']:.3f}")
    print(f"  identical outputs (a = b = c, {n} photos): {same}")
    print(
        f"  (b) with batch-invariant decoding (--exact): {rate['exact']:.3f} images/s, "
        f"{rate['exact'] / rate['a']:.2f}x (a), {rate['exact'] / rate['b']:.2f}x (b); "
        f"{exact_same}/{n} outputs identical to (a) (last round)"
    )
    t = summary.get("time_s", {})
    split = ", ".join(
        f"{k} {t[k]:.2f}" for k in ("read", "preprocess", "wait", "engine", "generate", "parse", "write") if k in t
    )
    print(f"  (c) last run: {summary.get('tokens_per_s', 0):.1f} tokens/s; time split s: {split}")


if __name__ == "__main__":
    raise SystemExit(main())
