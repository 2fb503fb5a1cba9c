"""Seconds to build (and save) each tiny test model: the test suite builds each once per session.

python benchmarks/tiny_model_build.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from capmill.testing import build_tiny_model

ARCHS = ("qwen3_5", "qwen2_5_vl", "qwen2_vl", "internvl", "blip2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for arch in ARCHS:
        times = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                build_tiny_model(arch, folder)
                times.append(time.perf_counter() - start)
        # the first build of a process also builds the shared tokenizer vocabulary, which later builds reuse
        again = f"   again {min(times[1:]):6.2f} s" if len(times) > 1 else ""
        print(f"{arch:12s} first {times[0]:6.2f} s{again}")


if __name__ == "__main__":
    main()
