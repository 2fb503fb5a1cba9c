"""`capmill testing`: tiny random-weight models of the real architectures, to try capmill without a GPU or a hub.

`capmill testing build-model qwen2_vl ./tiny` writes a checkpoint folder that loads exactly as a real one does;
its weights are random, so its captions are nonsense: it is for trying the commands, never for captions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# arch -> the named profile whose card runs that architecture
PROFILE_FOR_ARCH = {
    "qwen3_5": "json-captioner",
    "qwen2_5_vl": "caprl-3b",
    "qwen2_vl": "inkscope-2b",
    "internvl": "caprl-internvl-8b",
    "blip2": "blip2-lora",
}
STAND_IN_PROMPT = (
    "STAND-IN SCAFFOLD, NOT THE REAL PROMPT: the json-captioner's system prompt lives in the dataset "
    "AbstractPhil/json-coco-format (data/task_1.jsonl, first row). You turn an image or its caption into a "
    "structured representation by calling emit_caption_schema exactly once."
)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="testing_command", metavar="WHAT", required=True)
    build = sub.add_parser(
        "build-model",
        help="build a tiny random-weight model of a real architecture into a folder",
        description="Build a tiny random-weight model (offline, a few seconds) that loads like a real checkpoint. "
        "Its captions are nonsense: it is for trying the commands.",
    )
    build.add_argument("arch", choices=list(PROFILE_FOR_ARCH), help="architecture")
    build.add_argument("out", help="folder to write the checkpoint to")
    build.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a size knob, e.g. hidden_size=256 (docs/testing.md lists them); repeatable",
    )
    scaffold = sub.add_parser(
        "scaffold",
        help="write a stand-in json-captioner scaffold (system prompt + the real tool) to a JSON-lines file",
        description="Write a stand-in scaffold: the real emit_caption_schema tool with a placeholder system prompt, "
        "for trying json-captioner commands on a tiny model without the hub.",
    )
    scaffold.add_argument("out", help="file to write (JSON lines, one row)")


def run(args: argparse.Namespace) -> int:
    if args.testing_command == "scaffold":
        path = write_scaffold(Path(args.out))
        print(f"wrote a stand-in scaffold to {path} (placeholder system prompt, the real tool)")
        return 0
    from transformers.utils import logging as tf_logging

    from capmill.testing import build_tiny_model

    sizes = dict(_size(text) for text in args.size)
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()  # a save bar for a file of a few MB says nothing
    try:
        folder = build_tiny_model(args.arch, args.out, **sizes)
    finally:
        if bars:
            tf_logging.enable_progress_bar()
    profile = PROFILE_FOR_ARCH[args.arch]
    print(f"built a tiny {args.arch} model with RANDOM WEIGHTS in {folder}: its captions are nonsense")
    print(f"try: capmill caption PHOTOS/ --model {folder} --profile {profile} --out captions.jsonl", end="")
    if profile == "json-captioner":
        scaffold = write_scaffold(folder / "stand-in-scaffold.jsonl")
        print(f" --scaffold {scaffold}")
    else:
        print()
    return 0


def write_scaffold(path: Path) -> Path:
    from capmill.schema.tool import caption_tools

    row = {"messages": [{"role": "system", "content": STAND_IN_PROMPT}], "tools": caption_tools()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def _size(text: str) -> tuple[str, object]:
    from capmill.errors import ConfigError

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--size {text!r}: expected NAME=VALUE, e.g. hidden_size=256")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a word, e.g. vocab=full
