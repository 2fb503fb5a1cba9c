"""Memory stays flat: peak RSS of a run over N small images vs one over 20x more, side by side in one invocation.

Each run is a fresh interpreter running the real streaming pipeline (sources, decode worker process, the real
Captioner's prepare and parse, batching, Parquet shards, ledger, summary) from a folder of distinct small JPEGs.
The engine is a stand-in that answers instantly from the pixels: what is measured here is the plumbing, which
is what grows (or not) with the number of inputs; a model's memory does not depend on how many images pass.

    python benchmarks/memory_flat.py            # 1,000 vs 20,000 images
    python benchmarks/memory_flat.py --small 200 --large 4000
    python benchmarks/memory_flat.py --text --small 10000 --large 1000000

`--text`: caption-text inputs (one per line of a .txt, the json-captioner's text mode) through a cheap text-mode
stand-in engine that answers each with a fixed tool call at once: no image decoding, so a million inputs pass in
minutes and what is measured is only what grows per input (ids read, content sent, ledger, records, shards).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from capmill.engines import ENGINES
from capmill.engines.base import Engine
from capmill.records import Generation

class Echo(Engine):
    name = "bench-echo"
    def generate(self, requests):
        out = []
        for r in requests:
            px = r.images[0].resize((1, 1)).getpixel((0, 0))
            out.append(Generation(text=f"a square of color {px}", prompt_tokens=10, completion_tokens=6))
        return out

class TextEcho(Engine):
    name = "bench-text-echo"
    def generate(self, requests):
        call = ("<tool_call>\n<function=emit_caption_schema>\n<parameter=subjects>\n"
                '[{"name": "dog", "attributes": []}]\n</parameter>\n<parameter=setting>\noutdoor\n'
                "</parameter>\n</function>\n</tool_call>")
        return [Generation(text=call, prompt_tokens=10, completion_tokens=6) for _ in requests]

ENGINES.register("bench-echo", Echo)
ENGINES.register("bench-text-echo", TextEcho)
from capmill.captioner import Captioner
from capmill.data.sources import SourceOptions
from capmill.run.local import CaptionJob, LocalRunner
from capmill.run.pipeline import PipelineOptions

folder, run_dir, model, n, scaffold = sys.argv[1:6]
start = time.perf_counter()
if scaffold:  # text mode: caption text in, structured captions out
    from capmill.data.sources import SourceOptions
    make = lambda: Captioner(model=model, profile="json-captioner", engine="bench-text-echo", mode="text",
                             scaffold=scaffold)
    job = CaptionJob(inputs=[folder], run_dir=run_dir, fmt="parquet", shard_size=1000, progress=False,
                     make_captioner=make, source=SourceOptions(mode="text"),
                     pipeline=PipelineOptions(batch_size=64, workers=0, mode="text"))
else:
    job = CaptionJob(
        inputs=[folder], run_dir=run_dir, fmt="parquet", shard_size=1000, progress=False,
        make_captioner=lambda: Captioner(model=model, profile="inkscope-2b", engine="bench-echo"),
        pipeline=PipelineOptions(batch_size=16, workers=1),
    )
summary = LocalRunner(job).run()
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"n": int(n), "records": summary["run"]["records"], "seconds": time.perf_counter() - start,
                  "peak_rss_main": own, "peak_rss_worker": workers}))
"""


def make_images(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        buf = io.BytesIO()
        # distinct content (no deduplication shortcut): the index spread over three channels
        Image.new("RGB", (32, 32), (i % 256, (i // 256) % 256, (i // 65536) % 256)).save(buf, "JPEG", quality=95)
        (folder / f"{i // 1000:03d}" / f"{i:06d}.jpg").parent.mkdir(exist_ok=True)
        (folder / f"{i // 1000:03d}" / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def make_texts(path: Path, n: int) -> None:
    """n distinct caption lines (distinct content: no deduplication shortcut), from a small vocabulary as real
    captions are (a number per line would fill the grounding's bounded word cache and be measured instead)."""
    words = ("dog", "cat", "red", "blue", "beach", "park", "running", "sitting", "small", "old")
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            digits = " ".join(words[int(d)] for d in str(i))
            handle.write(f"a photo of {digits} at dusk\n")


def run(folder: Path, work: Path, model: Path, n: int, scaffold: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(work / f"run-{n}"), str(model), str(n), scaffold],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=20_000)
    parser.add_argument("--text", action="store_true", help="caption-text inputs and a cheap text-mode engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capmill-mem-") as tmp:
        work = Path(tmp)
        model = work / "model"
        model.mkdir()
        model_type = "qwen3_5" if args.text else "qwen2_vl"
        (model / "config.json").write_text(json.dumps({"model_type": model_type}))
        t = time.perf_counter()
        if args.text:
            scaffold = str(Path(__file__).parents[1] / "tests" / "models" / "data" / "scaffold_standin.jsonl")
            make_texts(work / "small.txt", args.small)
            make_texts(work / "large.txt", args.large)
            print(f"wrote {args.small + args.large} caption lines in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            small = run(work / "small.txt", work, model, args.small, scaffold)
            large = run(work / "large.txt", work, model, args.large, scaffold)
        else:
            make_images(work / "small", args.small)
            make_images(work / "large", args.large)
            print(f"made {args.small + args.large} images in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            small = run(work / "small", work, model, args.small)
            large = run(work / "large", work, model, args.large)
    mb = 1024 * 1024
    print("text mode, cheap stand-in engine" if args.text else "images, stand-in engine")
    print(f"{'inputs':>8} {'records':>8} {'seconds':>8} {'img/s':>7} {'main MB':>8} {'worker MB':>9} {'total MB':>8}")
    for r in (small, large):
        total = r["peak_rss_main"] + r["peak_rss_worker"]
        print(
            f"{r['n']:>8} {r['records']:>8} {r['seconds']:>8.1f} {r['records'] / r['seconds']:>7.0f} "
            f"{r['peak_rss_main'] / mb:>8.1f} {r['peak_rss_worker'] / mb:>9.1f} {total / mb:>8.1f}"
        )
    growth = (
        large["peak_rss_main"] + large["peak_rss_worker"] - small["peak_rss_main"] - small["peak_rss_worker"]
    ) / mb
    verdict = "within" if growth <= 100 else "OVER"
    print(f"peak RSS growth {args.small} -> {args.large} inputs: {growth:+.1f} MB ({verdict} the 100 MB budget)")
    assert small["records"] == args.small and large["records"] == args.large


if __name__ == "__main__":
    main()
