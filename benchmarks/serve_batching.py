"""Dynamic batching in `capmill serve`: 16 concurrent clients vs the same requests sent one by one.

Starts the real server (`capmill serve`, a subprocess) on the tiny random-weight Qwen2-VL fixture with the
inkscope-2b profile, then sends the same chat requests (COCO photos as data URIs, greedy, fixed max_tokens)
in rounds that alternate between one-by-one and 16 concurrent clients, so both see the same machine load.
Prints requests/s for each, their ratio, and whether every request got the same text both ways.

    python benchmarks/serve_batching.py [--requests 48] [--clients 16] [--rounds 2] [--max-tokens 128] [--max-wait-ms 50]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "tests" / "data" / "coco").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable, "-m", "capmill", "serve", "--model", str(model), "--profile", "inkscope-2b",
        "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
        "--max-queue", "1024", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def body(i: int, max_tokens: int) -> dict:
    image = base64.b64encode(PHOTOS[i % len(PHOTOS)].read_bytes()).decode()
    return {
        "model": "inkscope-2b",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
                    {"type": "text", "text": "Generate a detailed caption for this image."},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def send(client: httpx.Client, url: str, payload: bytes) -> str:
    headers = {"content-type": "application/json"}
    response = client.post(url, content=payload, headers=headers, timeout=600)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


def one_by_one(url: str, payloads: list[bytes]) -> tuple[float, list[str]]:
    with httpx.Client() as client:
        start = time.perf_counter()
        texts = [send(client, url, p) for p in payloads]
        return time.perf_counter() - start, texts


def concurrent(url: str, payloads: list[bytes], clients: int) -> tuple[float, list[str]]:
    local = [httpx.Client() for _ in range(clients)]
    try:
        with cf.ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            futures = [pool.submit(send, local[i % clients], url, p) for i, p in enumerate(payloads)]
            texts = [f.result() for f in futures]
            return time.perf_counter() - start, texts
    finally:
        for c in local:
            c.close()


def batch_stats(base: str) -> dict[str, float]:
    """The server's batch-size histogram: sum, count and cumulative bucket counts."""
    text = httpx.get(f"{base}/metrics").text
    rows = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("capmill_batch_size_"))
    return {name: float(value) for name, value in rows}


def batch_summary(before: dict[str, float], after: dict[str, float]) -> str:
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    count = delta["capmill_batch_size_count"]
    mean = delta["capmill_batch_size_sum"] / max(1.0, count)
    buckets, previous, parts = (
        sorted(
            ((float(k.split('le="')[1].rstrip('"}').replace("+Inf", "inf")), v) for k, v in delta.items() if "le=" in k)
        ),
        0.0,
        [],
    )
    for bound, cumulative in buckets:
        if cumulative > previous:
            parts.append(f"<={bound:g}: {cumulative - previous:g}")
        previous = cumulative
    return f"{count:g} engine batches, mean size {mean:.1f} ({', '.join(parts)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens per request (default: inkscope-2b's 128)")
    ap.add_argument("--max-wait-ms", type=float, default=50.0)
    args = ap.parse_args()

    from capmill.testing import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model("qwen2_vl", Path(tmp) / "tiny-qwen2_vl")
        port = free_port()
        proc = start_server(model, port, max_batch=args.clients, max_wait_ms=args.max_wait_ms)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/chat/completions"
        try:
            # Encoded once, up front: the clients share the server's two cores, so they should cost little.
            payloads = [json.dumps(body(i, args.max_tokens)).encode() for i in range(args.requests)]
            one_by_one(url, payloads[:2])  # warm-up
            seq_times, conc_times, same, total = [], [], 0, 0
            for _ in range(args.rounds):
                t_seq, seq_texts = one_by_one(url, payloads)
                before = batch_stats(base)
                t_conc, conc_texts = concurrent(url, payloads, args.clients)
                after = batch_stats(base)
                seq_times.append(t_seq)
                conc_times.append(t_conc)
                same += sum(a == b for a, b in zip(seq_texts, conc_texts, strict=True))
                total += len(payloads)
                print(
                    f"round: one-by-one {len(payloads) / t_seq:6.2f} req/s | {args.clients} clients "
                    f"{len(payloads) / t_conc:6.2f} req/s | {batch_summary(before, after)}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    seq = args.requests / statistics.median(seq_times)
    conc = args.requests / statistics.median(conc_times)
    print(f"\nmodel: tiny random-weight Qwen2-VL (capmill.testing), profile inkscope-2b, {args.max_tokens} new tokens")
    print(f"requests: {args.requests} x {args.rounds} rounds, images: {len(PHOTOS)} COCO photos, greedy")
    print(f"one by one:          {seq:7.2f} req/s")
    print(f"{args.clients} concurrent clients: {conc:7.2f} req/s")
    print(f"speed-up:            {conc / seq:7.2f}x")
    print(f"same text both ways: {same}/{total}")


if __name__ == "__main__":
    main()
