"""`capmill plugins`: the engines, profiles, sources and sinks that installed packages add (docs/plugins.md)."""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def registries() -> dict[str, object]:
    from capmill.data.sinks import SINKS
    from capmill.data.sources import SOURCES
    from capmill.engines import ENGINES
    from capmill.models.catalog import PROFILES

    return {"engine": ENGINES, "profile": PROFILES, "source": SOURCES, "sink": SINKS}


def run(args: argparse.Namespace) -> int:
    rows = []
    for kind, registry in registries().items():
        registry.names()  # reads the entry points
        for name, package in registry.plugins.items():
            rows.append({"kind": kind, "name": name, "package": package, "target": registry.target(name)})
        for name, package in registry.shadowed:
            rows.append({"kind": kind, "name": name, "package": package, "target": "(ignored: name taken)"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plugins installed (docs/plugins.md says how to write one)")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['kind']:8} {r['name']:{width}}  {r['package']}  {r['target']}")
    return 0
