"""`capmill models`: list the model profiles, show one, or tell which profile a checkpoint would get."""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show this profile in full")
    parser.add_argument("--for", dest="model", metavar="MODEL", help="which profile and family a hub id or folder gets")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _decoding_summary(profile) -> str:
    d = profile.decoding
    how = "greedy" if not d.do_sample else f"sample t={d.temperature} top_p={d.top_p}"
    stop = f", stop {list(d.stop)}" if d.stop else ""
    return f"{how}, {d.max_new_tokens} tokens{stop}"


def run(args: argparse.Namespace) -> int:
    from capmill.models.catalog import all_profiles, get_profile

    if args.model:
        from capmill.errors import ModelLoadError
        from capmill.models.resolve import resolve_family, resolve_profile

        profile = resolve_profile(args.model, args.name)
        try:
            family = resolve_family(args.model, profile)
        except ModelLoadError as exc:
            family = f"unknown ({exc})"
        out = {"model": args.model, "profile": profile.name, "family": family}
        print(json.dumps(out) if args.json else f"{args.model}: profile {profile.name}, family {family}")
        return 0
    if args.name:
        profile = get_profile(args.name)
        if args.json:
            print(profile.model_dump_json(indent=2))
            return 0
        for key, value in profile.model_dump(mode="json").items():
            if value not in (None, "", {}, []):
                print(f"{key:15} {value}")
        return 0
    profiles = all_profiles()
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return 0
    rows = [("PROFILE", "FAMILY", "MODES", "DECODING", "CHECKPOINT")]
    for p in profiles:
        rows.append(
            (p.name, p.family or "(from config)", ",".join(p.modes), _decoding_summary(p), p.default_model or "-")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0
