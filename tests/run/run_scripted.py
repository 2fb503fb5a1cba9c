"""A scripted engine for testing the plumbing around an engine (never as proof that an engine works).

It plugs into the real Captioner through the engine registry, so prepare/finish/parse are the real ones.
Its "caption" is computed from the pixels it receives, so a wrong image, rotation or duplicate shows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from capmill.engines import ENGINES
from capmill.engines.base import Engine
from capmill.records import Generation, Request

NAME = "scripted-test"
SCAFFOLD = Path(__file__).parents[1] / "models" / "data" / "scaffold_standin.jsonl"


class ScriptedEngine(Engine):
    name = NAME
    calls: ClassVar[list[str]] = []  # item ids of every request generated, in this process
    fail_batches: ClassVar[set[int]] = set()  # batch numbers (0-based) that raise, as a crashed engine would
    batches: ClassVar[int] = 0

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        number = ScriptedEngine.batches
        ScriptedEngine.batches += 1
        if number in ScriptedEngine.fail_batches:
            from capmill.errors import EngineError

            raise EngineError(f"scripted engine failure in batch {number}")
        delay = float(os.environ.get("CAPMILL_SCRIPTED_DELAY", "0"))
        if delay:
            time.sleep(delay * len(requests))
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Generation:
        ScriptedEngine.calls.append(request.item_id)
        if "engine-fail" in request.item_id:
            return Generation(text="", error="scripted per-item failure", finish_reason="error")
        if request.videos:
            frames = request.videos[0]
            text = f"video {len(frames)} frames {frames[0].width}x{frames[0].height}"
        elif request.images:
            image = request.images[0]
            top = image.crop((0, 0, image.width, max(1, image.height // 4))).resize((1, 1)).getpixel((0, 0))
            text = f"image {image.width}x{image.height} top {top[0]},{top[1]},{top[2]}"
        else:
            text = str(request.messages[-1]["content"])[-60:]
        if self.profile.output == "tool_call":
            subjects = json.dumps([{"name": text[:60], "attributes": []}])
            text = (
                "<tool_call>\n<function=emit_caption_schema>\n<parameter=subjects>\n"
                f"{subjects}\n</parameter>\n<parameter=setting>\nindoor\n</parameter>\n</function>\n</tool_call>"
            )
        return Generation(text=text, prompt_tokens=20, completion_tokens=5, timings={"generate": 0.001})

    @classmethod
    def reset(cls) -> None:
        cls.calls.clear()
        cls.fail_batches.clear()
        cls.batches = 0


def register() -> None:
    ENGINES.register(NAME, ScriptedEngine)


def model_dir(path: Path, model_type: str = "qwen2_vl") -> Path:
    """A folder with only config.json: enough for the Captioner to resolve the family; no weights are read."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


def captioner(model: Path, **kwargs: Any):
    from capmill.captioner import Captioner

    register()
    kwargs.setdefault("profile", "inkscope-2b")
    return Captioner(model=str(model), engine=NAME, **kwargs)


LAUNCHER = (
    "import sys; sys.path.insert(0, {here!r}); import run_scripted; run_scripted.register(); "
    "from capmill.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def cli_command(python: str, *args: str) -> list[str]:
    """`capmill ...` in a fresh interpreter with the scripted engine registered."""
    return [python, "-c", LAUNCHER.format(here=str(Path(__file__).parent)), *args]
