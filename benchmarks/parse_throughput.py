"""Parse + validate throughput of capmill.schema.parse_tool_call on one core.

Runs over the test corpus (tests/data/tool_calls/cases.jsonl: clean, repairable and refused outputs) and over a
stream of clean calls (what a healthy run sees), with the fast path on and off, side by side in one process.
Prints outputs/s and checks the target of 20,000 outputs/s on the corpus.

    python benchmarks/parse_throughput.py [--rounds 7] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from capmill.schema import StructuredCaption, parse_tool_call, render_tool_call
from capmill.schema import parse as parse_module

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tool_calls" / "cases.jsonl"
TARGET = 20_000


def _rate(texts: list[str], fn: Callable[[str], object], rounds: int, seconds: float) -> tuple[float, float]:
    """Best-of-`rounds` outputs per CPU-second and per wall-second; each round repeats `texts` for ~`seconds`.

    The process is single-threaded and pinned to one core, so CPU time is the time it held that core; on a
    shared machine wall time also counts the time other processes held it, which says nothing about the parser.
    """
    fn(texts[0])
    repeats = 1
    while True:  # size one round
        start = time.process_time()
        for _ in range(repeats):
            for text in texts:
                fn(text)
        if time.process_time() - start >= seconds / 4:
            break
        repeats *= 2
    cpu_rates, wall_rates = [], []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(repeats):
            for text in texts:
                fn(text)
        count = repeats * len(texts)
        cpu_rates.append(count / (time.process_time() - cpu))
        wall_rates.append(count / (time.perf_counter() - wall))
    return max(cpu_rates), max(wall_rates)


def _no_fast_path(text: str) -> None:
    return None


def _calibrate() -> tuple[float, float]:
    """CPU and wall seconds of a fixed pure-Python loop: shows how much of the core this process really got."""
    cpu, wall = time.process_time(), time.perf_counter()
    sum(range(10**7))
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    cases = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = [case["raw"] for case in cases]
    clean = [render_tool_call(StructuredCaption.model_validate(c["caption"])) for c in cases if c["status"] == "ok"]
    by_status = {s: [c["raw"] for c in cases if c["status"] == s] for s in ("ok", "repaired", "invalid")}

    fast_path = parse_module._fast

    def without_fast_path(text: str) -> object:
        # parse_tool_call itself, with the fast path switched off: the same entry point and bookkeeping.
        parse_module._fast = _no_fast_path
        try:
            return parse_tool_call(text)
        finally:
            parse_module._fast = fast_path

    calib_cpu, calib_wall = _calibrate()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {platform.python_version()} on {platform.machine()}, pinned to one core, best of {args.rounds} rounds"
    )
    print(
        f"machine: load average {load:.1f} on {os.cpu_count()} cores; calibration loop {calib_cpu:.3f} s CPU, "
        f"{calib_wall:.3f} s wall (wall/CPU = {calib_wall / calib_cpu:.1f}: the share of the core we did not get)"
    )
    print(
        f"corpus: {len(corpus)} outputs ({', '.join(f'{k} {len(v)}' for k, v in by_status.items())}); "
        f"clean stream: {len(clean)} calls rendered as the chat template writes them\n"
    )
    rows = [
        ("corpus, parse_tool_call", corpus, parse_tool_call),
        ("corpus, general parser only (no fast path)", corpus, without_fast_path),
        ("corpus 'ok' cases only", by_status["ok"], parse_tool_call),
        ("corpus 'repaired' cases only", by_status["repaired"], parse_tool_call),
        ("corpus 'invalid' cases only", by_status["invalid"], parse_tool_call),
        ("clean calls, parse_tool_call", clean, parse_tool_call),
        ("clean calls, general parser only", clean, without_fast_path),
    ]
    print(f"{'':<46} {'per CPU-second':>16} {'per wall-second':>16} {'us each':>8}")
    results = {}
    for label, texts, fn in rows:
        cpu_rate, wall_rate = _rate(texts, fn, args.rounds, args.seconds)
        results[label] = cpu_rate
        print(f"{label:<46} {cpu_rate:>16,.0f} {wall_rate:>16,.0f} {1e6 / cpu_rate:>8.1f}")
    print()
    fast_gain = results["clean calls, parse_tool_call"] / results["clean calls, general parser only"]
    corpus_gain = results["corpus, parse_tool_call"] / results["corpus, general parser only (no fast path)"]
    print(f"fast path speed-up: {fast_gain:.2f}x on clean calls, {corpus_gain:.2f}x on the corpus")
    corpus_rate = results["corpus, parse_tool_call"]
    verdict = "PASS" if corpus_rate >= TARGET else "FAIL"
    print(
        f"target {TARGET:,} outputs/s on one core, over the corpus: {verdict} ({corpus_rate / TARGET:.2f}x the target)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
