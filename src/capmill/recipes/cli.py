"""`capmill caption INPUT --recipe FILE`: the recipe runner behind the caption command's own flags."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from typing import Any

from capmill.errors import ConfigError

# flags that say what one captioner does: a recipe says that per stage
STAGE_FLAGS = ("model", "profile", "prompt", "scaffold", "mode", "max_new_tokens", "temperature", "top_p", "seed")


def run_recipe(args: argparse.Namespace) -> int:
    from capmill.data.fetch import FetchOptions
    from capmill.data.images import DEFAULT_MAX_PIXELS, DecodeOptions
    from capmill.data.sources import SourceOptions
    from capmill.recipes.runner import RecipeRunner
    from capmill.recipes.spec import Recipe
    from capmill.run.pipeline import PipelineOptions

    given = [f"--{f.replace('_', '-')}" for f in STAGE_FLAGS if getattr(args, f, None) is not None]
    if given or getattr(args, "constrained", False) or getattr(args, "devices", None):
        extra = given or ["--constrained/--devices"]
        raise ConfigError(f"--recipe sets the model, prompt and decoding per stage; drop {', '.join(extra)}")
    recipe = Recipe.load(args.recipe)
    source = SourceOptions(
        recursive=args.recursive,
        id_column=args.id_column,
        image_column=args.image_column,
        split=args.split,
    )
    if args.show_prompt:
        return show_recipe_prompts(recipe, list(args.inputs), source)
    from capmill.cli.caption import _outputs

    if args.format in ("webdataset", "hf"):
        raise ConfigError(f"--format {args.format}: a recipe writes jsonl, parquet or sidecar")
    run_dir, fmt, out_file, temporary = _outputs(args)
    kinds = tuple(k.strip() for k in args.sidecar_kinds.split(",") if k.strip())
    sidecar: dict[str, Any] = {"kinds": kinds, "overwrite": args.overwrite_sidecars}
    if getattr(args, "sidecar_captions", None):
        sidecar["captions"] = args.sidecar_captions
    runner = RecipeRunner(
        recipe,
        list(args.inputs),
        run_dir,
        fmt=fmt,
        out_file=out_file,
        shard_size=args.shard_size,
        source=source,
        pipeline=PipelineOptions(
            fetch_threads=max(0, args.download_threads),
            decode=DecodeOptions(
                max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, resize_max_side=args.resize_max_side, draft=args.draft
            ),
            fetch=FetchOptions(
                timeout=args.timeout, retries=args.retries, max_bytes=int(args.max_download_mb * 1024 * 1024)
            ),
        ),
        sidecar=sidecar,
        progress=False if args.quiet else None,
        workers=args.workers,
        runner=args.runner,  # each stage runs on it (capmill.run.RUNNERS), one stage after another
        runner_options={
            k: v
            for k, v in (("address", getattr(args, "address", None)), ("actors", getattr(args, "actors", None)))
            if v
        },
    )
    said = _say_choice(args.quiet)
    try:
        summary = runner.run()
        if temporary:
            from capmill.run.runfolder import read_records

            for record in read_records(run_dir):
                sys.stdout.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    finally:
        if said is not None:
            logging.getLogger("capmill.recipes").removeHandler(said)
        if temporary:
            shutil.rmtree(run_dir, ignore_errors=True)
    if not args.quiet:
        run_info = summary["run"]
        where = out_file or ("stdout" if temporary else run_dir)
        print(
            f"capmill caption: recipe {recipe.name or args.recipe}: {run_info['records']} records "
            f"{run_info['by_status']} ({len(recipe.stages)} stages) -> {where}",
            file=sys.stderr,
        )
    return 0


def _say_choice(quiet: bool) -> logging.Handler | None:
    """Unless --quiet, the runner's one line on running the stages side by side or one at a time goes to stderr."""
    if quiet:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("capmill caption: %(message)s"))
    logger = logging.getLogger("capmill.recipes")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def show_recipe_prompts(recipe: Any, inputs: list[str], source: Any) -> int:
    """Each stage's prompt for the first input; an earlier stage's output shows as `<stages.NAME>`."""
    from capmill.data.sources import open_sources
    from capmill.recipes.prompt_sets import for_item
    from capmill.recipes.template import item_context

    for item in open_sources(inputs, source):
        for stage in recipe.stages:
            if stage.tagger is not None:
                print(f"--- stage {stage.name} (tagger) ---\n(no prompt: the tags of {stage.tagger.model})")
                continue
            placeholders = {n: {"status": "ok", "caption": f"<stages.{n}>", "structured": {}} for n in stage.reads()}
            context = item_context(item.id, item.source, {}, placeholders)
            if stage.prompt_set is not None:
                variants = for_item(stage.prompt_set, item.id)
                prompts = [(v.name, v.template) for v in variants]
            elif stage.prompt is not None:
                prompts = [("", stage.templates()[0][1])]
            else:
                prompts = [("", None)]
            for name, template in prompts:
                label = f"{stage.name}" + (f" [{name}]" if name else "")
                text = "(the profile's own prompt)" if template is None else _render(template, context)
                print(f"--- stage {label} ({stage.mode or 'caption'}) ---\n{text}")
        return 0
    raise ConfigError("no input found to render a prompt for")


def _render(template: Any, context: dict[str, Any]) -> str:
    from capmill.recipes.template import MissingValue

    try:
        return template.render(context)
    except MissingValue as exc:
        return f"{template.source}   (for this input: {exc})"
