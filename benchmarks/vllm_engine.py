"""vLLM engine vs. transformers engine, and vLLM's prefix caching on vs. off, side by side in one run.

Run in the vLLM environment (scripts/setup-vllm-env.sh), on tiny random-weight models built offline:

Part 1: the same 12 COCO photos, Inkscope profile (Qwen2-VL), greedy, --tokens new tokens, one batch of 12:
captions per second of the transformers engine and of the vLLM engine (float32 both, outputs checked equal).
Part 2: the json-captioner's scaffold (system prompt + tool, ~760 tokens shared by every request) in front of
--texts caption texts, on tiny Qwen3.5 (bfloat16) and tiny Qwen2-VL (float32): vLLM with prefix caching on vs.
off, and the share of prompt tokens the cache served.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/vllm_engine.py [--tokens 32] [--texts 48]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "data" / "coco"
SCAFFOLD = ROOT / "tests" / "models" / "data" / "scaffold_standin.jsonl"
VLLM = {"enforce_eager": True, "max_model_len": 4096}


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median process CPU seconds (all threads) of `fn()` over `repeats` runs after one
    warm-up, and its last result. On a shared machine the CPU seconds are the fairer comparison."""
    out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def engines_part(folder: Path, tokens: int, repeats: int) -> None:
    from capmill.captioner import Captioner
    from capmill.engines.transformers_engine import TransformersEngine
    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.testing import build_tiny_model

    path = build_tiny_model("qwen2_vl", folder / "qwen2_vl")
    cap = Captioner(model=str(path), profile="inkscope-2b", decoding={"max_new_tokens": tokens})
    photos = sorted(COCO.glob("*.jpg"))
    requests = [cap.prepare(cap.to_item(str(p), i)) for i, p in enumerate(photos)]
    hf = TransformersEngine(str(path), cap.profile, {"max_batch_size": len(requests)})
    t_hf, c_hf, ref = timed(lambda: hf.generate(requests), repeats)
    hf.close()
    vl = VLLMEngine(str(path), cap.profile, {**VLLM, "dtype": "float32"})
    t_vl, c_vl, got = timed(lambda: vl.generate(requests), repeats)
    vl.close()
    same = sum(a.text == b.text for a, b in zip(ref, got, strict=True))
    n = len(requests)
    print(f"part 1: {n} photos, Qwen2-VL tiny, greedy, {tokens} new tokens, one batch (median of {repeats})")
    print(f"  transformers engine  {t_hf:6.2f} s wall  {c_hf:6.2f} s CPU  {n / c_hf:6.2f} captions per CPU-second")
    print(f"  vLLM engine          {t_vl:6.2f} s wall  {c_vl:6.2f} s CPU  {n / c_vl:6.2f} captions per CPU-second")
    print(
        f"  vLLM / transformers: {c_hf / c_vl:.2f}x per CPU-second, {t_hf / t_vl:.2f}x wall; outputs equal: {same}/{n}"
    )


def prefix_part(folder: Path, n_texts: int, repeats: int) -> None:
    import json

    from capmill.engines.vllm_engine import VLLMEngine
    from capmill.models.catalog import get_profile
    from capmill.models.families import get_family
    from capmill.models.scaffold import load_scaffold
    from capmill.records import Decoding
    from capmill.testing import build_tiny_model

    scaffold = load_scaffold(SCAFFOLD)
    rows = [
        json.loads(line) for line in (COCO / "images.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    texts = [c for row in rows for c in row.get("captions", [])][:n_texts]
    qwen3_5 = {"hidden_size": 256, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 256}
    cases = [
        ("Qwen3.5 (hybrid linear attention), bf16", "qwen3_5", qwen3_5, "json-captioner", "bfloat16"),
        ("Qwen2-VL (full attention), float32", "qwen2_vl", {}, "inkscope-2b", "float32"),
    ]
    print(f"part 2: {len(texts)} caption texts behind the json-captioner scaffold (system prompt + tool), 4 new tokens")
    for label, arch, sizes, profile_name, dtype in cases:
        path = build_tiny_model(arch, folder / f"{arch}-prefix", **sizes)
        profile = get_profile(profile_name)
        family = get_family(arch)
        # the Qwen2-VL template does not render tools: put them in its system prompt so the shared prefix is alike
        system = scaffold.system_prompt if arch == "qwen3_5" else scaffold.system_prompt + json.dumps(scaffold.tools)

        def batch(run: int, family=family, system=system, profile=profile) -> list:
            """The scaffold + a caption text never seen before (run-numbered): only the shared prefix can be cached."""
            return [
                family.build_request(
                    f"t{i}", prompt=f"({run}) {t}", system=system, decoding=Decoding(max_new_tokens=4),
                    tools=scaffold.tools, chat_kwargs=dict(profile.chat_kwargs),
                )
                for i, t in enumerate(texts)
            ]  # fmt: skip

        results = {}
        for caching in (False, True):
            options = {
                **VLLM,
                "dtype": dtype,
                "enable_prefix_caching": caching,
                "engine_args": {"disable_log_stats": False},
            }
            engine = VLLMEngine(str(path), profile, options)
            runs = iter(range(1000))
            seconds, cpu, out = timed(lambda e=engine, b=batch, r=runs: e.generate(b(next(r))), repeats)
            metrics = {m.name.split(":")[-1]: m for m in engine.llm.get_metrics()}
            hits = getattr(metrics.get("prefix_cache_hits"), "value", 0)
            queries = getattr(metrics.get("prefix_cache_queries"), "value", 0)
            results[caching] = (seconds, cpu, out[0].prompt_tokens, hits / queries if queries else 0.0)
            engine.close()
        n = len(texts)
        print(f"  {label}: prompt {results[True][2]} tokens")
        for caching, (seconds, cpu, _, share) in results.items():
            print(
                f"    prefix caching {'on ' if caching else 'off'}  {seconds:6.2f} s wall  {cpu:6.2f} s CPU"
                f"  {n / cpu:7.2f} requests per CPU-second  (cache served {share:.0%} of prompt tokens)"
            )
        off, on = results[False], results[True]
        print(f"    on / off: {off[1] / on[1]:.2f}x per CPU-second, {off[0] / on[0]:.2f}x wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch
    import vllm

    print(f"vllm {vllm.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        engines_part(Path(tmp), args.tokens, args.repeats)
        prefix_part(Path(tmp), args.texts, args.repeats)


if __name__ == "__main__":
    main()
