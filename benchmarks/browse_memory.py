"""`capmill serve --browse`: memory while paging a run of 2,000 vs 50,000 records, paged from shards vs held whole.

Writes two run folders with the real RunFolder (JSON-lines shards of 1,000 records, captions ~400 characters),
then, each in a fresh process, opens the browser's BrowseService, pages through every record 60 at a time,
searches, filters and looks records up by id, and reports the growth of resident memory over the process
before it opened the run. The same is measured for holding every record as a dict (what the browser did
before it paged from shards).

    python benchmarks/browse_memory.py [--small 2000] [--large 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, random, sys, psutil
run, mode = sys.argv[1], sys.argv[2]
import capmill.serve.browse, capmill.run.runfolder  # imports before the baseline
proc = psutil.Process()
base = proc.memory_info().rss
peak = base
if mode == "paged":
    from capmill.serve.browse import BrowseService
    browse = BrowseService(run)
    total = browse.query(limit=1)["total"]
    for offset in range(0, total, 60):
        browse.query(offset=offset, limit=60)
        peak = max(peak, proc.memory_info().rss)
    browse.query(q="number 7", limit=60)
    browse.query(status="error", limit=60)
    for i in random.Random(0).sample(range(total), 200):
        assert browse.get(f"r{i:06d}") is not None
    peak = max(peak, proc.memory_info().rss)
    browse.close()
else:
    from capmill.run.runfolder import read_records
    held = {r.id: r.to_dict() for r in read_records(run)}
    total = len(held)
    peak = max(peak, proc.memory_info().rss)
print(json.dumps({"records": total, "growth_mib": (peak - base) / 2**20}))
"""


def write_run(path: Path, n: int) -> None:
    from capmill.records import Record
    from capmill.run.runfolder import RunFolder

    rng = random.Random(n)
    words = "a dog cat person street tree red blue small large sitting standing near under with".split()
    folder = RunFolder(str(path), {"profile": "x"}, shard_size=1000)
    for i in range(n):
        caption = " ".join(rng.choice(words) for _ in range(70)) + f" number {i}"
        folder.add(
            Record(id=f"r{i:06d}", source=f"/data/r{i:06d}.jpg", content_hash=f"{i:064x}", profile="p",
                   engine="transformers", model="m", prompt_hash="h", decoding={"max_new_tokens": 128},
                   status="error" if i % 50 == 0 else "ok", caption=caption, raw=caption,
                   tokens={"prompt": 300, "completion": 90}, timings={"generate": 0.5})
        )  # fmt: skip
    folder.close()
    folder.release()


def measure(run: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=50000)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="capmill-browse-mem-") as tmp:
        for n in (args.small, args.large):
            write_run(Path(tmp) / f"run{n}", n)
            rows[n] = {mode: measure(Path(tmp) / f"run{n}", mode) for mode in ("paged", "held")}
    print(f"{'records':>8} | {'paged from shards':>18} | {'all held as dicts':>18}")
    for n, got in rows.items():
        print(f"{n:>8} | {got['paged']['growth_mib']:>14.1f} MiB | {got['held']['growth_mib']:>14.1f} MiB")
    small, large = rows[args.small], rows[args.large]
    print(
        f"{args.large // args.small}x the records: paged grows "
        f"{large['paged']['growth_mib'] - small['paged']['growth_mib']:+.1f} MiB, held grows "
        f"{large['held']['growth_mib'] - small['held']['growth_mib']:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
