"""What a two-stage recipe costs against running its two stages as two separate runs, side by side in one run.

The stages: a tiny random Qwen2-VL captions real photos ("Describe {stem} in detail."), then the same model
rewrites each caption in text mode ("Shorten: {stages.detailed}"). Separately, that is `capmill caption` over the
photos, a JSONL manifest of the captions written from its records, and `capmill caption --mode text` over it
(the template filled in by hand, as a person chaining runs does). As a recipe it is one `Recipe.run`, which also
joins the records; "side by side" is the same recipe with both stages running at once (both models loaded,
records streaming from the first stage to the second). Every way runs in a thread of its own (see _in_thread). Each way runs `--repeats` times, alternating, in fresh run folders; medians are reported.

    python benchmarks/recipe_overhead.py [--photos 24] [--tokens 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

COCO = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "coco" / "val2017")


def separate(model: str, inputs: list[str], work: str, tokens: int) -> float:
    from capmill.captioner import Captioner
    from capmill.data.sources import SourceOptions
    from capmill.run.local import CaptionJob, LocalRunner
    from capmill.run.pipeline import PipelineOptions
    from capmill.run.runfolder import read_records

    start = _clock()
    first = CaptionJob(
        inputs=inputs,
        make_captioner=lambda: Captioner(model=model, prompt=None, decoding={"max_new_tokens": tokens}),
        run_dir=os.path.join(work, "one"),
        pipeline=PipelineOptions(workers=0),
        progress=False,
    )
    LocalRunner(first).run()
    manifest = os.path.join(work, "captions.jsonl")
    with open(manifest, "w", encoding="utf-8") as handle:
        for r in read_records(os.path.join(work, "one")):
            if r.ok:
                handle.write(json.dumps({"id": r.id, "text": f"Shorten: {r.caption}"}) + "\n")
    second = CaptionJob(
        inputs=[manifest],
        make_captioner=lambda: _text_captioner(model, tokens),
        run_dir=os.path.join(work, "two"),
        source=SourceOptions(mode="text", text_column="text"),
        pipeline=PipelineOptions(mode="text", workers=0),
        progress=False,
    )
    LocalRunner(second).run()
    return _since(start)


def _text_captioner(model: str, tokens: int):
    from capmill.captioner import Captioner
    from capmill.models.catalog import GENERIC

    profile = GENERIC.model_copy(update={"modes": ("caption", "text")})
    return Captioner(model=model, profile=profile, mode="text", decoding={"max_new_tokens": tokens})


def recipe(model: str, inputs: list[str], work: str, tokens: int, side_by_side: bool = False) -> float:
    from capmill.recipes import Recipe

    r = Recipe.from_dict(
        {
            "stages": [
                {"name": "detailed", "model": model, "prompt": None, "decoding": {"max_new_tokens": tokens}},
                {
                    "name": "short",
                    "model": model,
                    "mode": "text",
                    "prompt": "Shorten: {stages.detailed}",
                    "decoding": {"max_new_tokens": tokens},
                },
            ],
            "side_by_side": side_by_side,
        }
    )
    start = _clock()
    summary = r.run(inputs, os.path.join(work, "recipe"), progress=False, workers=0)
    took = _since(start)
    done = {name: stage["session"]["captioned"] for name, stage in summary["stages"].items()}
    assert summary["run"]["records"] == len(inputs) and done["detailed"] == len(inputs), (summary["run"], done)
    return took


def _side_by_side(model: str, inputs: list[str], work: str, tokens: int) -> tuple[float, float]:
    return recipe(model, inputs, work, tokens, side_by_side=True)


def _in_thread(fn, *args):
    """Run one way in a fresh thread: side by side, the stages generate from threads, and on a busy machine torch
    was seen generating several times faster from a thread than from the main one (docs/benchmarks.md); every way
    runs from a thread so that the comparison is only of the recipe."""
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(f"{fn.__name__} failed (see above)")
    return result[0]


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a busy shared machine the CPU time is the steadier one."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    from capmill.testing import build_tiny_model

    torch.set_num_threads(2)
    root = tempfile.mkdtemp(prefix="capmill-recipe-bench-")
    model = str(build_tiny_model("qwen2_vl", os.path.join(root, "model"), hidden_size=256, num_layers=4, num_heads=4))
    photos = sorted(glob.glob(os.path.join(COCO, "*.jpg")))[: args.photos]
    print(f"{len(photos)} photos, {args.tokens} new tokens per stage, tiny Qwen2-VL (hidden 256, 4 layers), CPU")
    ways = {"separate runs": separate, "recipe": recipe, "side by side": _side_by_side}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in ways}
    for i in range(args.repeats):
        for label, fn in ways.items():
            work = os.path.join(root, f"{label.replace(' ', '-')}-{i}")
            os.makedirs(work)
            times[label].append(_in_thread(fn, model, photos, work, args.tokens))
            wall, cpu = times[label][-1]
            print(f"  {label:14s} run {i + 1}: wall {wall:.2f} s, CPU {cpu:.2f} s")
    for k, name in ((0, "wall"), (1, "CPU")):
        sep = statistics.median(t[k] for t in times["separate runs"])
        rec = statistics.median(t[k] for t in times["recipe"])
        both = statistics.median(t[k] for t in times["side by side"])
        print(
            f"median {name}: separate runs {sep:.2f} s, recipe {rec:.2f} s, side by side {both:.2f} s; "
            f"recipe / separate = {rec / sep:.3f}, side by side / separate = {both / sep:.3f}"
        )
    print(f"load average while running: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
