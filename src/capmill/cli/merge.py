"""`capmill merge ADAPTER --base M --out DIR`: fold a LoRA adapter into its base, checked for faithfulness."""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="LoRA adapter folder (e.g. RUN/adapter)")
    parser.add_argument("--base", help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--out", help="folder for the merged checkpoint")
    parser.add_argument(
        "--verify", metavar="DIR", help="only check an existing merged checkpoint against base + adapter"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="max absolute logit difference (default: 1e-4 x the largest logit for float32, 2e-2 for bfloat16)",
    )
    parser.add_argument("--image", action="append", default=[], help="sample image for the check (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--profile",
        help="profile the merged model runs under, recorded in it (default: the adapter's training preset, "
        "else the base's)",
    )
    parser.add_argument("--json", action="store_true", help="print the faithfulness report as JSON")


def run(args: argparse.Namespace) -> int:
    from capmill.errors import ConfigError
    from capmill.train.merge import merge_adapter, verify_merged

    common = {"base": args.base, "dtype": args.dtype, "device": args.device, "tolerance": args.tolerance,
              "images": args.image or None}  # fmt: skip
    if args.verify:
        report = verify_merged(args.verify, args.adapter, **common)
    elif args.out:
        report = merge_adapter(args.adapter, args.out, overwrite=args.overwrite, profile=args.profile, **common)
    else:
        raise ConfigError("pass --out DIR to merge, or --verify DIR to check an existing merge")
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        where = f" -> {report.out}" if report.out else ""
        if args.out and not args.verify:
            recorded = _recorded_profile(args.out)
            where += f" (profile {recorded})" if recorded else ""
        print(
            f"faithful{where}: max |logit diff| {report.in_memory:.3g} in memory, "
            f"{report.reloaded:.3g} reloaded (tolerance {report.tolerance:g}, {report.samples} samples)"
        )
    return 0


def _recorded_profile(folder: str) -> str | None:
    from capmill.models.resolve import recorded_profile

    profile = recorded_profile(folder)
    return profile.name if profile else None
