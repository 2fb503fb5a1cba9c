"""`capmill` entry point: dispatches to one module per subcommand and turns typed errors into messages."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from capmill import __version__
from capmill.errors import CapmillError

# subcommand -> module in capmill.cli; each module has `register(parser)` and `run(args) -> int`.
SUBCOMMANDS = {
    "caption": ("caption", "caption images, videos or caption text"),
    "models": ("models", "list the model profiles"),
    "serve": ("serve", "serve a captioner over an OpenAI-compatible HTTP API with a web gallery"),
    "eval": ("eval_cmd", "measure caption quality and compare runs"),
    "train": ("train", "LoRA fine-tuning of a captioner"),
    "merge": ("merge", "merge a LoRA adapter into its base, checked for faithfulness"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capmill", description="Turn image collections into caption datasets.")
    parser.add_argument("--version", action="version", version=f"capmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"capmill.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("capmill.cli"):
                continue  # subcommand not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.register(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except CapmillError as exc:
        print(f"capmill {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"capmill {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
