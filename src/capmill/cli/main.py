"""`capmill` entry point: dispatches to one module per subcommand and turns typed errors into messages.

Every failure ends with one line saying what to do next; library warnings a user cannot act on are held back
(one line says how many) unless `--verbose` is given.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from capmill import __version__
from capmill.errors import (
    CapmillError,
    EngineError,
    InputError,
    MergeFaithfulnessError,
    MissingDependencyError,
    ModelLoadError,
    OverloadedError,
    RunConflictError,
    ScaffoldError,
    TrainingError,
    UnknownNameError,
    UnsupportedError,
)

# subcommand -> module in capmill.cli; each module has `register(parser)` and `run(args) -> int`.
SUBCOMMANDS = {
    "caption": ("caption", "caption images, videos or caption text"),
    "models": ("models", "list the model profiles"),
    "serve": ("serve", "serve a captioner over an OpenAI-compatible HTTP API with a web gallery"),
    "eval": ("eval_cmd", "measure caption quality and compare runs"),
    "train": ("train", "LoRA fine-tuning of a captioner"),
    "merge": ("merge", "merge a LoRA adapter into its base, checked for faithfulness"),
    "plugins": ("plugins", "list the engines, profiles, sources and sinks that installed plugins add"),
    "testing": ("testing", "build tiny random-weight models to try capmill without a GPU or a model hub"),
}

# what to do, by kind of error (the first match along the error's class hierarchy wins)
NEXT_STEP: list[tuple[type[BaseException], str]] = [
    (MissingDependencyError, "install the extra named above, then run the same command again"),
    (RunConflictError, "give a new --run-dir, or the settings this run folder was started with"),
    (ScaffoldError, "pass --scaffold FILE: the json-captioner's task_1.jsonl (system prompt + tools)"),
    (UnsupportedError, "choose another engine or profile (`capmill models` lists the profiles)"),
    (ModelLoadError, "check the model id or path: a hub id needs the network or a cached copy, a folder config.json"),
    (EngineError, "check that the engine or server is up and serves the model, then run the same command to resume"),
    (OverloadedError, "wait a moment and try again"),
    (TrainingError, "fix the training data or config named above and run the same command again"),
    (MergeFaithfulnessError, "nothing was written; check the adapter and --base, or raise --tolerance knowingly"),
    (InputError, "fix or remove the input named above"),
]


class Parser(argparse.ArgumentParser):
    """argparse with the failing subcommand's usage, a "did you mean", and a last line saying what to do."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        lines = [f"{self.prog}: error: {message}"]
        guess = _guess_from_message(message)
        if guess:
            lines.append(f"did you mean {guess}?")
        lines.append(f"run `{self.prog} --help` to see every option")
        self.exit(2, "\n".join(lines) + "\n")

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]


def build_parser() -> Parser:
    parser = Parser(prog="capmill", description="Turn image collections into caption datasets.")
    parser.add_argument("--version", action="version", version=f"capmill {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show library warnings (held back by default)")
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
        if "--verbose" not in p.option_strings():
            p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show library warnings")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = getattr(args, "command", None)
    if extras:
        target = _subparser(parser, command) or parser
        _unknown_arguments(target, extras)
    if not getattr(args, "_run", None):
        parser.print_help()
        print("\nname a command: `capmill COMMAND --help` shows its options", file=sys.stderr)
        return 2
    from capmill.cli.quiet import QuietLibraries

    quiet = None if args.verbose else QuietLibraries()
    try:
        if quiet is not None:
            quiet.__enter__()
        return int(args._run(args) or 0)
    except CapmillError as exc:
        print(f"capmill {command}: error: {exc}", file=sys.stderr)
        print(next_step(exc, command), file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # a library (uvicorn, for one) ended the process after printing why
        if exc.code not in (0, None):
            print(
                f"capmill {command}: stopped (exit code {exc.code}) for the reason printed above; "
                f"fix that and run the same command again",
                file=sys.stderr,
            )
        raise
    except KeyboardInterrupt:
        print(f"capmill {command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: show where, and say what to do
        traceback.print_exc()
        print(f"capmill {command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("this is a bug in capmill: please report it with the traceback above", file=sys.stderr)
        return 1
    finally:
        if quiet is not None:
            quiet.__exit__(None, None, None)
            if quiet.held_back:
                n = quiet.held_back
                print(
                    f"capmill: {n} library warning{'s' if n > 1 else ''} held back; --verbose shows them",
                    file=sys.stderr,
                )


def next_step(exc: CapmillError, command: str | None) -> str:
    """The one line that ends an error message: what the user can do about it."""
    if getattr(exc, "hint", None):
        return str(exc.hint)
    if isinstance(exc, UnknownNameError):
        guess = difflib.get_close_matches(exc.name, exc.choices, n=1)
        if guess:
            return f"did you mean {guess[0]!r}?"
        if exc.kind == "profile":
            return "`capmill models` lists the profiles"
        return f"use one of the {exc.kind} names listed above"
    for kind, text in NEXT_STEP:
        if isinstance(exc, kind):
            if kind is ModelLoadError and command in ("caption", "serve"):
                text += " (`capmill testing build-model` makes a tiny one to try commands with)"
            return text
    return f"fix what is named above and run the same command again (`capmill {command} --help` lists the options)"


def _subparser(parser: Parser, command: str | None) -> Parser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return None


def _unknown_arguments(parser: Parser, extras: list[str]) -> NoReturn:
    flags = [e for e in extras if e.startswith("-") and len(e) > 1 and not _is_number(e)]
    message = f"unrecognized arguments: {' '.join(extras)}"
    guesses = []
    for flag in flags:
        name = flag.split("=", 1)[0]
        match = difflib.get_close_matches(name.replace("_", "-"), parser.option_strings(), n=1, cutoff=0.6)
        if match:
            guesses.append(f"{match[0]} (for {name})")
    parser.print_usage(sys.stderr)
    lines = [f"{parser.prog}: error: {message}"]
    if guesses:
        lines.append(f"did you mean {', '.join(guesses)}?")
    lines.append(f"run `{parser.prog} --help` to see every option")
    parser.exit(2, "\n".join(lines) + "\n")


def _guess_from_message(message: str) -> str | None:
    """For argparse's 'invalid choice' errors, the closest valid choice."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return None
    choices = re.findall(r"'([^']*)'", found.group(2))
    match = difflib.get_close_matches(found.group(1), choices, n=1)
    return repr(match[0]) if match else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
