"""What a recipe's metadata file and manifest columns cost in memory: rows kept in Python dicts (the previous way)
vs. the metadata file indexed in SQLite on disk, the manifest read along with its items and the ids seen in a
temporary SQLite table (the current way), side by side in one run.

Each way is a fresh interpreter that iterates the real `recipe-stage` source of a text stage whose prompt reads
three columns (`{meta.subject}` from a JSONL manifest INPUT of N rows, `{meta.tags}` and `{meta.caption}` from a
metadata CSV of N rows, matched by file name), rendering every prompt, as a stage does before its engine sees the
items. No model runs: a model's memory does not depend on the table. The previous way is the earlier code, kept
here verbatim (every metadata row in a dict by key and base name, every manifest row in a dict by line number, the
ids yielded in a set) and swapped into the source module. Peak RSS is the child's ru_maxrss; "imports MB" is
before the source is read.

    python benchmarks/recipe_metadata_memory.py                 # 100,000 rows
    python benchmarks/recipe_metadata_memory.py --rows 300000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
import capmill.recipes.source as source
from capmill.recipes.metadata import KEY_COLUMNS, read_table

class DictMetadata:  # the previous source.Metadata, verbatim
    def __init__(self, path, index_dir=None):
        self.rows = {}
        if not path:
            return
        rows = [row for _, row in read_table(path)]
        key = next((k for k in KEY_COLUMNS if rows and k in rows[0]), None)
        for row in rows:
            value = str(row.get(key) or "")
            if value:
                self.rows[value] = row
                self.rows.setdefault(os.path.basename(value), row)
    def lookup(self, context, src):
        for key in (context["id"], src, context["filename"], context["stem"]):
            if key in self.rows:
                return self.rows[key]
        return {}
    def close(self):
        pass

class DictRows:  # the previous `dict(read_table(spec))` of a manifest INPUT
    def __init__(self, path):
        self.rows = dict(read_table(path))
    def get(self, lineno):
        return self.rows.get(lineno, {})
    def close(self):
        pass

class SetIds:  # the previous `seen: set[str]` of ids yielded
    def __init__(self):
        self.ids = set()
    def add(self, item_id):
        if item_id in self.ids:
            return False
        self.ids.add(item_id)
        return True
    def close(self):
        pass

way, plan = sys.argv[1:3]
if way == "dicts":
    source.MetadataIndex, source.ManifestRows, source.SeenIds = DictMetadata, DictRows, SetIds
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
n, chars, errors = 0, 0, 0
for item in source.StageSource(plan):
    n += 1
    chars += len(item.text or "")
    errors += item.error is not None
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"items": n, "chars": chars, "errors": errors, "seconds": seconds, "imports_mb": before, "peak_mb": peak}))
"""

WORDS = "dog cat sofa street tree bus red blue green window light shadow wooden metal child bicycle".split()


def make_inputs(folder: str, rows: int) -> tuple[str, str]:
    rng = random.Random(0)
    manifest, metadata = os.path.join(folder, "inputs.jsonl"), os.path.join(folder, "tags.csv")
    with open(manifest, "w", encoding="utf-8") as m, open(metadata, "w", encoding="utf-8") as t:
        t.write("file_name,tags,caption\n")
        for i in range(rows):
            name = f"images/{i // 1000:04d}/{i:07d}.jpg"
            m.write(json.dumps({"file_name": name, "subject": " ".join(rng.choices(WORDS, k=3))}) + "\n")
            tags = ", ".join(rng.choices(WORDS, k=8))
            caption = " ".join(rng.choices(WORDS, k=30))
            t.write(f'{os.path.basename(name)},"{tags}",{caption}\n')
    return manifest, metadata


def write_plan(folder: str, manifest: str, metadata: str) -> str:
    from capmill.data.sources import SourceOptions
    from capmill.recipes.spec import Stage

    stage = Stage(name="short", model="unused", mode="text", prompt="{meta.subject}: {meta.tags}. {meta.caption}")
    plan = {
        "inputs": [manifest],
        "source_options": {k: getattr(SourceOptions(), k) for k in SourceOptions.__dataclass_fields__},
        "stage": stage.model_dump_json(),
        "reads": {},
        "metadata": metadata,
        "index_dir": os.path.join(folder, "index"),
    }
    path = os.path.join(folder, "plan.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(plan, handle)
    return path


def measure(way: str, plan: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, way, plan], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{way}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest, metadata = make_inputs(folder, args.rows)
        plan = write_plan(folder, manifest, metadata)
        size = os.path.getsize(metadata) / 2**20
        print(f"{args.rows} rows: manifest {os.path.getsize(manifest) / 2**20:.1f} MB, metadata CSV {size:.1f} MB")
        results = {
            "dicts": measure("dicts", plan),
            "on disk, index built": measure("disk", plan),
            "on disk, index reused": measure("disk", plan),
        }
        print(f"{'way':24} {'items':>8} {'seconds':>8} {'imports MB':>11} {'peak MB':>8} {'growth MB':>10}")
        for way, r in results.items():
            growth = r["peak_mb"] - r["imports_mb"]
            print(
                f"{way:24} {r['items']:>8} {r['seconds']:>8.1f} {r['imports_mb']:>11.1f} {r['peak_mb']:>8.1f} "
                f"{growth:>10.1f}"
            )
        assert len({(r["items"], r["chars"]) for r in results.values()}) == 1, "the ways rendered different prompts"
        assert not any(r["errors"] for r in results.values()), "an item found no metadata row"
        old, new = results["dicts"], results["on disk, index built"]
        old_growth, new_growth = old["peak_mb"] - old["imports_mb"], new["peak_mb"] - new["imports_mb"]
        print(
            f"peak RSS: dicts {old['peak_mb']:.1f} MB, on disk {new['peak_mb']:.1f} MB "
            f"({new['peak_mb'] / old['peak_mb']:.2f}x); growth over imports {old_growth:.1f} MB vs {new_growth:.1f} MB"
        )


if __name__ == "__main__":
    main()
