"""`capmill serve` under load and abuse: valid requests mixed with every client fault, for a fixed time.

Starts the real server (`capmill serve`, a subprocess, on 127.0.0.1) on the tiny random-weight Qwen2-VL fixture
(inkscope-2b profile), then for `--seconds` runs `--workers` closed-loop clients, each cycling through: valid
chat requests, /v1/captions uploads, streaming clients, oversize bodies, bad images, slow-drip uploads,
clients that disconnect mid-request and streaming clients that leave after the first token. Meanwhile it
probes /healthz every 0.25 s (1 s timeout) and samples the server's resident memory. It prints what every
kind of request got and checks: /healthz always answered within 1 s, no 5xx for anything, every valid request
got its caption, every fault got its 4xx, memory after the warm-up grew by less than `--memory-bound-mb`.

    python benchmarks/serve_load.py [--seconds 60] [--workers 10]

`load()` is also what tests/serve/test_load.py runs, for a few seconds, against an in-process server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "tests" / "data" / "coco").glob("*.jpg"))
PROFILE = "inkscope-2b"
CHAT = "/v1/chat/completions"
EXPECTED = {  # what each kind of request must get
    "valid": {200},
    "caption": {200},
    "stream": {200},
    "oversize": {413},
    "bad_image": {400},
    "slow_drip": {408},
    "disconnect": {None},  # no answer is read
    "stream_leave": {200},
}
KINDS = tuple(EXPECTED)


def chat(image: bytes, **extra) -> dict:  # noqa: ANN003
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "Describe."}]
    return {"model": PROFILE, "messages": [{"role": "user", "content": content}], "max_tokens": 16, **extra}


class Load:
    """The clients, the health prober and the tally."""

    def __init__(self, base: str, seconds: float, workers: int, max_body: int, photos: list[bytes]):
        self.base, self.seconds, self.workers, self.max_body, self.photos = base, seconds, workers, max_body, photos
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.health: list[float] = []
        self.health_failures = 0
        self.problems: list[str] = []
        self.end = 0.0

    async def run(self) -> dict:
        self.end = time.monotonic() + self.seconds
        async with httpx.AsyncClient(base_url=self.base, timeout=300) as client:
            prober = asyncio.create_task(self._probe(client))
            await asyncio.gather(*(self._worker(client, w) for w in range(self.workers)))
            prober.cancel()
            metrics = (await client.get("/metrics")).text
        server_5xx = sum(
            float(v) for v in re.findall(r'^capmill_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$', metrics, re.M)
        )
        return {
            "statuses": {k: dict(v) for k, v in self.statuses.items()},
            "health_probes": len(self.health),
            "health_max_s": max(self.health, default=0.0),
            "health_failures": self.health_failures,
            "server_5xx": server_5xx,
            "problems": self.problems[:20],
        }

    async def _probe(self, client: httpx.AsyncClient) -> None:
        while True:
            started = time.perf_counter()
            try:
                r = await client.get("/healthz", timeout=1.0)
                if r.status_code != 200:
                    self.health_failures += 1
                self.health.append(time.perf_counter() - started)
            except httpx.HTTPError:
                self.health_failures += 1
            await asyncio.sleep(0.25)

    async def _worker(self, client: httpx.AsyncClient, w: int) -> None:
        rng = random.Random(w)
        k = w
        while time.monotonic() < self.end:
            kind = KINDS[k % len(KINDS)]
            k += 1
            try:
                status = await getattr(self, kind)(client, rng)
            except Exception as exc:  # noqa: BLE001 - a client-side failure is a finding, not a crash
                status = f"client error: {type(exc).__name__}"
                self.problems.append(f"{kind}: {type(exc).__name__}: {exc}")
            self.statuses[kind][status] += 1
            if status not in EXPECTED[kind]:
                self.problems.append(f"{kind}: got {status}")

    # ---------------------------------------------------------------- the kinds of request

    async def valid(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        r = await client.post(CHAT, json=chat(rng.choice(self.photos), temperature=0))
        if r.status_code == 200 and not isinstance(r.json()["choices"][0]["message"]["content"], str):
            return -1
        return r.status_code

    async def caption(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        r = await client.post("/v1/captions", files={"file": ("photo.jpg", rng.choice(self.photos))})
        if r.status_code == 200 and r.json()["status"] not in ("ok", "repaired"):
            return -1
        return r.status_code

    async def stream(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        async with client.stream("POST", CHAT, json=chat(rng.choice(self.photos), stream=True)) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        if r.status_code == 200 and (lines[-1] != "data: [DONE]" or any('"error"' in x for x in lines)):
            return -1
        return r.status_code

    async def oversize(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        blob = b"x" * (self.max_body + 1024)
        if rng.random() < 0.5:
            r = await client.post(CHAT, content=blob, headers={"content-type": "application/json"})
        else:  # no Content-Length: the server counts what arrives

            async def chunks():  # noqa: ANN202
                for i in range(0, len(blob), 65536):
                    yield blob[i : i + 65536]

            r = await client.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
        return r.status_code

    async def bad_image(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        photo = rng.choice(self.photos)
        data = rng.choice([b"not an image at all", photo[: len(photo) // 3], b"\xff\xd8\xff" + os.urandom(2000)])
        return (await client.post(CHAT, json=chat(data))).status_code

    async def slow_drip(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        parts = urlsplit(self.base)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{".encode()
        )
        await writer.drain()
        status_line = b""

        async def drip() -> None:
            try:
                while True:
                    await asyncio.sleep(0.3)
                    writer.write(b" ")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass

        dripping = asyncio.create_task(drip())
        try:
            status_line = await asyncio.wait_for(reader.readline(), 120)
        finally:
            dripping.cancel()
            writer.close()
        return int(status_line.split()[1]) if status_line else -1

    async def disconnect(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        parts = urlsplit(self.base)
        body = json.dumps(chat(rng.choice(self.photos), max_tokens=16)).encode()
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        cut = rng.choice([len(body) // 2, len(body)])  # mid-upload, or while it is being generated
        writer.write(head.encode() + body[:cut])
        await writer.drain()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        writer.close()
        return None

    async def stream_leave(self, client: httpx.AsyncClient, rng: random.Random) -> int:
        async with client.stream("POST", CHAT, json=chat(rng.choice(self.photos), stream=True, max_tokens=32)) as r:
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
            return r.status_code


def load(base: str, seconds: float, workers: int, max_body: int) -> dict:
    photos = [p.read_bytes() for p in PHOTOS]
    return asyncio.run(Load(base, seconds, workers, max_body, photos).run())


# ---------------------------------------------------------------- the benchmark: a real server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_body_mb: float, receive_timeout: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable, "-m", "capmill", "serve", "--model", str(model), "--profile", PROFILE, "--port", str(port),
        "--max-batch", "8", "--max-wait-ms", "20", "--max-body-mb", str(max_body_mb),
        "--limit", f"receive_timeout_s={receive_timeout}", "--log-level", "warning",
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before memory is measured")
    ap.add_argument("--memory-bound-mb", type=float, default=200.0)
    args = ap.parse_args()

    import psutil

    from capmill.testing import build_tiny_model

    workdir = tempfile.TemporaryDirectory(prefix="capmill-load-")
    model = build_tiny_model("qwen2_vl", Path(workdir.name))
    port, max_body_mb = free_port(), 2.0
    proc = start_server(model, port, max_body_mb, receive_timeout=3.0)
    base = f"http://127.0.0.1:{port}"
    server = psutil.Process(proc.pid)
    samples: list[tuple[float, int]] = []
    stop = False

    def sample() -> None:
        while not stop:
            samples.append((time.monotonic(), server.memory_info().rss))
            time.sleep(0.5)

    import threading

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        max_body = int(max_body_mb * 1024 * 1024)
        start = time.monotonic()
        sampler.start()
        load(base, args.warmup, args.workers, max_body)
        warm = server.memory_info().rss
        measured_from = time.monotonic()
        report = load(base, args.seconds, args.workers, max_body)
        stop = True
        sampler.join()
        end_rss = server.memory_info().rss
    finally:
        stop = True
        proc.terminate()
        proc.wait(timeout=60)
        workdir.cleanup()
    peak = max(rss for t, rss in samples if t >= measured_from)
    mib = 1024 * 1024
    print(f"model: tiny random-weight Qwen2-VL, profile {PROFILE}, {args.workers} clients, {args.seconds:g} s")
    print(f"(after {args.warmup:g} s of warm-up; {time.monotonic() - start:.0f} s in all)")
    for kind in KINDS:
        got = report["statuses"].get(kind, {})
        shown = ", ".join(f"{'no answer read' if s is None else s}: {n}" for s, n in sorted(got.items(), key=str))
        print(f"  {kind:13s} {sum(got.values()):5d}  ({shown})")
    checks = {
        f"/healthz answered every probe within 1 s ({report['health_probes']} probes, "
        f"slowest {report['health_max_s'] * 1000:.0f} ms)": report["health_failures"] == 0
        and report["health_max_s"] < 1.0,
        f"no 5xx (server counted {report['server_5xx']:g})": report["server_5xx"] == 0,
        "every valid request got its caption": all(
            set(report["statuses"].get(k, {})) <= {200} for k in ("valid", "caption", "stream")
        ),
        "every fault got its 4xx": not report["problems"],
        f"memory: {warm / mib:.0f} MiB after warm-up, peak {peak / mib:.0f} MiB, end {end_rss / mib:.0f} MiB "
        f"(bound: +{args.memory_bound_mb:g} MiB)": peak - warm < args.memory_bound_mb * mib,
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    for problem in report["problems"]:
        print("  problem:", problem)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
