"""The Python face of `capmill caption`: a resumable run over a dataset, and the records of a run folder.

`caption_dataset` runs exactly what `capmill caption` runs (the same option names, defaults, checks, runner and
run folder), so a run started from Python resumes from the command line and the other way round.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from capmill.errors import ConfigError
from capmill.records import Record

# CLI-only switches that make no sense from Python (a prompt preview prints and runs nothing)
NOT_FROM_PYTHON = frozenset({"show_prompt", "inputs"})


def caption_dataset(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    run_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    profile: str | None = None,
    quiet: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Caption `inputs` into a run folder and return its summary (what `summary.json` holds).

    `inputs` are what `capmill caption INPUT...` takes: files, folders, globs, URL lists, Parquet, WebDataset,
    manifests, dataset ids. Give `run_dir` (or `out=FILE.jsonl|.parquet`, whose run folder is `FILE.capmill/`):
    calling again with the same arguments resumes and captions nothing twice. Every other option of
    `capmill caption` is a keyword with its long name in snake case: `engine="vllm"`, `format="parquet"`,
    `batch_size=16`, `max_new_tokens=64`, `do_sample=False`, `scaffold="task_1.jsonl"`, `constrained=True`, ...
    Unknown names raise ConfigError.
    """
    from capmill.cli import caption

    if run_dir is None and out is None:
        raise ConfigError("caption_dataset needs run_dir= (a resumable run folder) or out= (a .jsonl or .parquet file)")
    names = [os.fspath(inputs)] if isinstance(inputs, str | os.PathLike) else [os.fspath(i) for i in inputs]
    if not names:
        raise ConfigError("caption_dataset: no inputs given")
    parser = argparse.ArgumentParser(prog="capmill caption", add_help=False)
    caption.register(parser)
    args = parser.parse_args(names)
    given = {"run_dir": run_dir, "out": out, "model": model, "profile": profile, "quiet": quiet, **options}
    actions = {a.dest: a for a in parser._actions}
    for name, value in given.items():
        if name not in actions or name in NOT_FROM_PYTHON:
            allowed = [d for d in actions if d not in NOT_FROM_PYTHON and d != "help"]
            guess = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; the options are: {', '.join(sorted(allowed))}"
            raise ConfigError(f"caption_dataset: unknown option {name!r}{hint}")
        choices = actions[name].choices
        if value is not None and choices is not None and value not in choices:
            raise ConfigError(f"caption_dataset: {name}={value!r}; choose one of: {', '.join(map(str, choices))}")
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        setattr(args, name, value)
    folder = _run_folder(args)
    caption.run(args)
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def read_records(run_dir: str | os.PathLike) -> Iterator[Record]:
    """Every record of a run folder, shard by shard in order (complete shards only), as `capmill.Record`s."""
    from capmill.run.runfolder import read_records as read

    return read(os.fspath(run_dir))


def _run_folder(args: argparse.Namespace) -> str:
    # as `capmill caption` places it: --run-dir, else FILE.capmill beside --out
    return args.run_dir or f"{args.out}.capmill"
