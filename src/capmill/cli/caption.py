"""`capmill caption INPUT...`: caption images, videos or caption text into JSONL, Parquet, WebDataset, sidecars or HF.

Longer than most modules (~350 lines): its length is the subcommand's flag list (inputs, outputs, engine, run,
quality, recipes) and their translation into one job; the work itself lives in run/, quality/ and recipes/.

Every run lives in a run folder (`--run-dir`, or `FILE.capmill/` beside `--out FILE`): running the same command
again resumes it. See docs/runs.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from capmill.cli.engine_options import add_arguments as add_engine_option_arguments
from capmill.cli.engine_options import check as check_engine_options
from capmill.cli.engine_options import engine_options as parsed_engine_options
from capmill.errors import ConfigError

FORMATS = ("jsonl", "parquet", "webdataset", "sidecar", "hf")
OUT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}


def register(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image/video files, folders, globs, file or URL lists (.txt), URLs, .parquet/.arrow, "
        "WebDataset .tar, JSONL/CSV manifests, HF dataset folders or ids; `kind:target` forces a kind",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", help="hub id or local folder (default: the profile's checkpoint)")
    g.add_argument("--profile", "-p", help="profile name (default: inferred from the model)")
    g.add_argument("--engine", "-e", default="transformers", help="transformers | vllm | openai (default: %(default)s)")
    g.add_argument("--mode", choices=("caption", "structured", "text"), help="default: the profile's")
    g.add_argument("--prompt", help="the user prompt (generic profile, or to override a profile's)")
    g.add_argument("--scaffold", help="JSON captioner: file with the system prompt row (task_1.jsonl)")
    g.add_argument("--recipe", metavar="FILE", help=RECIPE_HELP)
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    g.add_argument("--exact", action="store_true", help=EXACT_HELP)
    add_engine_option_arguments(g)
    g.add_argument(
        "--devices",
        help="one engine per device: auto (every GPU), all, 0,1, cuda:0,cuda:2, or cpu,cpu; see docs/scale-out.md",
    )
    g.add_argument(
        "--constrained",
        action="store_true",
        help="structured profiles: grammar-constrained decoding, so every output is a valid tool call (llguidance)",
    )
    d = p.add_argument_group("decoding (defaults from the model card)")
    d.add_argument("--max-new-tokens", type=int)
    sampling = d.add_mutually_exclusive_group()
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", default=None, help="greedy decoding")
    sampling.add_argument("--sample", dest="do_sample", action="store_true", help="sampled decoding")
    d.add_argument("--temperature", type=float)
    d.add_argument("--top-p", type=float)
    d.add_argument("--seed", type=int)
    d.add_argument("--video-fps", type=float, help="video: frames sampled per second")
    d.add_argument("--video-frames", type=int, help="video: number of frames sampled")
    o = p.add_argument_group("output and run")
    o.add_argument("--out", "-o", help="one output file (.jsonl or .parquet); its run folder is FILE.capmill/")
    o.add_argument("--run-dir", help="run folder: manifest, record shards, ledger, summary.json (resumable)")
    o.add_argument("--format", choices=FORMATS, help="shard format in the run folder (default: jsonl)")
    o.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: %(default)s)")
    o.add_argument("--sidecar-kinds", default="txt,json", help="sidecar files: txt, json, tags (comma-separated)")
    o.add_argument("--overwrite-sidecars", action="store_true", help="replace existing sidecar files")
    o.add_argument(
        "--sidecar-captions",
        choices=("first", "lines", "files"),
        help="--recipe with a prompt set: one caption per line in photo.txt (lines), or photo.VARIANT.txt (files)",
    )
    o.add_argument("--runner", default="local", help="local (default) or a runner added to capmill.run.RUNNERS")
    o.add_argument("--address", help="--runner ray: the cluster to join (default: a new local one)")
    o.add_argument("--actors", type=int, help="--runner ray: model actors (default: one per GPU, else CPUs - 1)")
    o.add_argument("--batch-size", "-b", type=int, default=8)
    o.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode processes; 0 decodes in turns with the model (default: 0 for a model on the CPU, else cores-1)",
    )
    o.add_argument("--show-prompt", action="store_true", help="print the rendered prompt of the first input; no model")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    o.add_argument(
        "--retry-errors",
        action="store_true",
        help="redo every error record, final ones (bad inputs) too; retryable ones are always redone",
    )
    o.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=20,
        help="stop the run after this many engine failures in a row (server down, out of memory); 0: never "
        "(default: %(default)s)",
    )
    o.add_argument(
        "--max-error-rate",
        type=float,
        help="a finished run whose error records exceed this fraction of its records exits with status 4",
    )
    o.add_argument(
        "--commit-seconds",
        type=float,
        default=30.0,
        help="commit the open shard at least this often, so a crash loses at most this much work "
        "(default: %(default)s)",
    )
    q = p.add_argument_group("quality")
    q.add_argument(
        "--gate",
        nargs="?",
        const="default",
        metavar="GATE.yaml",
        help="check every caption (loops, refusals, truncation, invalid output, language, CLIPScore) and retry "
        "failures; alone: the default policy (docs/quality.md)",
    )
    q.add_argument(
        "--tagger",
        metavar="MODEL|TAGGER.yaml",
        help="WD-format ONNX tagger (folder with model.onnx + selected_tags.csv, or a YAML of its options): "
        "tags in each record's `tags` field (docs/quality.md)",
    )
    q.add_argument(
        "--budget",
        metavar="ENCODER:TOKENS",
        help="keep captions within a text encoder's tokens (clip:77, t5:512, or TOKENIZER:N), never cut; the "
        "record says its token count and method",
    )
    q.add_argument(
        "--budget-method",
        choices=("auto", "constrain", "rewrite"),
        help="constrain: a word-limit grammar keeps the first try within --budget (then counted; one still over is "
        "rewritten); rewrite: a caption over it is asked for again with a word limit in the prompt; auto "
        "(default): constrain where the engine can and the output is free text, else rewrite",
    )
    q.add_argument(
        "--embed",
        metavar="DIR",
        help="also write copies of the JPEG/PNG inputs into DIR with the caption and tags inside "
        "(XMP dc:description/dc:subject, EXIF ImageDescription, PNG text)",
    )
    q.add_argument(
        "--in-place", action="store_true", help="write caption and tags into the input images themselves (atomic)"
    )
    i = p.add_argument_group("inputs")
    i.add_argument("--image-column", help="table column with image bytes, paths or URLs")
    i.add_argument("--text-column", help="table column with caption text (text mode)")
    i.add_argument("--id-column", help="table column with ids")
    i.add_argument("--split", help="Hugging Face dataset split (default: all of a saved DatasetDict; hub: train)")
    i.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: top level only")
    i.add_argument("--max-pixels", type=int, help="decompression-bomb limit in pixels (default: 89,478,485)")
    i.add_argument("--resize-max-side", type=int, help="downscale larger images first (changes what the model sees)")
    i.add_argument("--draft", action="store_true", help="with --resize-max-side: JPEG draft decoding (faster)")
    i.add_argument("--timeout", type=float, default=10.0, help="URL inputs: seconds per request")
    i.add_argument("--retries", type=int, default=2, help="URL inputs: retries on timeouts and 5xx")
    i.add_argument("--download-threads", type=int, default=16, help="URL inputs: downloads at once")
    i.add_argument("--max-download-mb", type=float, default=256.0, help="URL inputs: size cap")


def _decoding(args: argparse.Namespace) -> dict[str, Any] | None:
    given = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.do_sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def captioner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"device": args.device, "dtype": args.dtype, **exact_options(args.engine, args.exact)}
    engine_options = check_engine_options(args.engine, parsed_engine_options(args, flags))
    return {
        "model": args.model,
        "profile": args.profile,
        "engine": args.engine,
        "mode": args.mode,
        "prompt": args.prompt,
        "scaffold": args.scaffold,
        "decoding": _decoding(args),
        "engine_options": engine_options,
        "batch_size": args.batch_size,
        "video_fps": args.video_fps,
        "video_frames": args.video_frames,
        **({"constrained": True} if getattr(args, "constrained", False) else {}),
    }


EXACT_HELP = (
    "batch-invariant decoding: every row of a batch computed as that input alone (decode-step matrix products and "
    "attention row by row, padding cut away), so a batched greedy caption equals captioning that input alone, to "
    "the bit, for photos of any sizes; proved on the first batch, else rows run one at a time (slower decoding; "
    "transformers engine)"
)


def exact_options(engine: str, exact: bool) -> dict[str, Any]:
    """The engine option behind --exact; ConfigError for an engine without it."""
    if not exact:
        return {}
    from capmill.engines import ENGINES

    if "batch_invariant" not in ENGINES.get(engine or "transformers").Options.model_fields:
        raise ConfigError(f"--exact is not an option of engine {engine!r}; use --engine transformers")
    return {"batch_invariant": True}


def default_workers(kwargs: dict[str, Any], devices: str | None) -> int:
    """Decode processes when --workers is not given: none for a model on this machine's CPU (decoding takes turns
    with it: beside it, it only slows the model down), else one per core but one."""
    from capmill.engines import ENGINES

    engine = ENGINES.get(kwargs.get("engine") or "transformers")
    options = dict(kwargs.get("engine_options") or {})
    if devices:
        from capmill.run.devices import engine_options_for, resolve_devices

        on_cpu = any(engine.uses_host_cpu(engine_options_for(options, d)) for d in resolve_devices(devices))
    else:
        on_cpu = engine.uses_host_cpu(options)
    return 0 if on_cpu else max(1, (os.cpu_count() or 2) - 1)


def make_captioner(kwargs: dict[str, Any]) -> Any:
    from capmill.captioner import Captioner

    return Captioner(**kwargs)


def _outputs(args: argparse.Namespace) -> tuple[str, str, str | None, bool]:
    """(run folder, format, single output file, whether the run folder is temporary)."""
    fmt = args.format
    if args.out:
        ext = os.path.splitext(args.out)[1].lower()
        if ext not in OUT_FORMATS:
            raise ConfigError(f"--out {args.out}: use a .jsonl or .parquet file, or --run-dir with --format")
        if fmt and fmt != OUT_FORMATS[ext]:
            raise ConfigError(f"--out {args.out} is {OUT_FORMATS[ext]}, but --format says {fmt}")
        return args.run_dir or f"{args.out}.capmill", OUT_FORMATS[ext], args.out, False
    if args.run_dir:
        return args.run_dir, fmt or "jsonl", None, False
    if fmt and fmt != "jsonl":
        raise ConfigError(f"--format {fmt} needs --run-dir (or --out)")
    return tempfile.mkdtemp(prefix="capmill-run-"), "jsonl", None, True


def show_prompt(args: argparse.Namespace) -> int:
    from capmill.data.fetch import load
    from capmill.data.sources import SourceOptions, open_sources
    from capmill.run.workers import load_item

    captioner = make_captioner(captioner_kwargs(args))
    source = open_sources(
        args.inputs, SourceOptions(mode=captioner.mode, text_column=args.text_column, image_column=args.image_column)
    )
    for item in source:
        if item.kind == "text":
            load(item)
        else:
            from capmill.data.fetch import FetchOptions
            from capmill.data.images import DecodeOptions

            item, error, _ = load_item(item, DecodeOptions(), FetchOptions())
            if error is not None:
                raise error
        print(captioner.render_prompt(item, captioner.mode))
        return 0
    raise ConfigError("no input found to render a prompt for")


RECIPE_HELP = (
    "a recipe (YAML): stages with their own model, prompt template ({filename}, {meta.COLUMN}, {stages.NAME}), "
    "prompt set and constraints, each resumed on its own; replaces --model/--profile/--prompt; see docs/recipes.md"
)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "recipe", None):
        from capmill.recipes.cli import run_recipe

        return run_recipe(args)
    if getattr(args, "sidecar_captions", None):
        raise ConfigError("--sidecar-captions is for --recipe runs with a prompt set (many captions per image)")
    if args.show_prompt:
        return show_prompt(args)
    from capmill.run.stopping import interrupted_message, stop_on_signals

    with stop_on_signals():  # SIGTERM stops the run as Ctrl-C does: what finished is committed
        try:
            return _run(args)
        except KeyboardInterrupt as exc:  # before the run folder was opened: nothing to save
            where = args.run_dir or (f"{args.out}.capmill" if args.out else "the run folder")
            message, code = interrupted_message(exc, where, 0, None)
            print(f"capmill caption: {message}", file=sys.stderr)
            return code


def _run(args: argparse.Namespace) -> int:
    from capmill.data.fetch import FetchOptions
    from capmill.data.images import DEFAULT_MAX_PIXELS, DecodeOptions
    from capmill.data.sources import SourceOptions
    from capmill.run import RUNNERS
    from capmill.run.local import CaptionJob
    from capmill.run.pipeline import PipelineOptions

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if args.max_error_rate is not None and not 0 <= args.max_error_rate <= 1:
        raise ConfigError("--max-error-rate is a fraction between 0 and 1")
    if args.max_consecutive_failures < 0 or args.commit_seconds <= 0:
        raise ConfigError("--max-consecutive-failures must be 0 or more and --commit-seconds more than 0")
    kinds = tuple(k.strip() for k in args.sidecar_kinds.split(",") if k.strip())
    if not kinds or set(kinds) - {"txt", "json", "tags"}:
        raise ConfigError("--sidecar-kinds takes txt, json, tags or a comma-separated mix")
    if getattr(args, "embed", None) and getattr(args, "in_place", False):
        raise ConfigError("give --embed DIR (copies) or --in-place (the originals), not both")
    runner_cls = RUNNERS.get(args.runner)
    if args.runner == "ray" and args.run_dir and not args.out and not args.format:
        args.format = "parquet"  # a cluster run writes Parquet shards unless told otherwise
    run_dir, fmt, out_file, temporary = _outputs(args)
    kwargs = captioner_kwargs(args)
    probe_mode = args.mode or "caption"
    workers = args.workers if args.workers is not None else default_workers(kwargs, getattr(args, "devices", None))
    from capmill.run.devices import captioner_factory

    if getattr(args, "devices", None) and args.runner != "local":
        raise ConfigError(f"--devices is for the local runner; --runner {args.runner} places its own engines")
    make = make_captioner
    quality_flags = ("gate", "tagger", "budget", "budget_method")
    if any(getattr(args, flag, None) for flag in quality_flags):
        from capmill.quality.gated import captioner_maker

        make = captioner_maker(args.gate, args.tagger, args.budget, getattr(args, "budget_method", None))
    factory, n_devices = captioner_factory(kwargs, getattr(args, "devices", None), make)
    job = CaptionJob(
        inputs=list(args.inputs),
        make_captioner=factory,
        run_dir=run_dir,
        fmt=fmt,
        shard_size=args.shard_size,
        source=SourceOptions(
            mode=probe_mode,
            recursive=args.recursive,
            id_column=args.id_column,
            image_column=args.image_column,
            text_column=args.text_column,
            split=args.split,
        ),
        pipeline=PipelineOptions(
            mode=args.mode,
            batch_size=args.batch_size * n_devices,  # a full batch for every device
            workers=workers,
            fetch_threads=max(0, args.download_threads),
            max_consecutive_failures=args.max_consecutive_failures,
            decode=DecodeOptions(
                max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, resize_max_side=args.resize_max_side, draft=args.draft
            ),
            fetch=FetchOptions(
                timeout=args.timeout, retries=args.retries, max_bytes=int(args.max_download_mb * 1024 * 1024)
            ),
        ),
        out_file=out_file,
        sidecar={"kinds": kinds, "overwrite": args.overwrite_sidecars},
        progress=False if args.quiet else None,
        retry_errors=args.retry_errors,
        max_error_rate=args.max_error_rate,
        commit_seconds=args.commit_seconds,
        runner_options={
            k: v
            for k, v in (("address", getattr(args, "address", None)), ("actors", getattr(args, "actors", None)))
            if v
        },
    )
    from capmill.errors import RunInterrupted

    try:
        try:
            summary = runner_cls(job).run()
        except RunInterrupted as exc:
            print(f"capmill caption: {exc}", file=sys.stderr)
            return exc.exit_code
        if getattr(args, "gate", None) or getattr(args, "budget", None):
            from capmill.quality.gated import add_gate_summary

            summary = add_gate_summary(run_dir, summary, write=not temporary)
            if not args.quiet:
                g = summary["gate"]
                print(
                    f"capmill caption: quality gate: {g['passed_first_try']} passed at once, {g['retried']} retried, "
                    f"{g['fixed']} fixed, {g['not_fixed']} not fixed {g['not_fixed_by_reason'] or ''}".rstrip(),
                    file=sys.stderr,
                )
        if getattr(args, "embed", None) or getattr(args, "in_place", False):
            from capmill.data.sinks.embedded import embed_run

            embedded = embed_run(run_dir, args.embed, args.in_place)
            if not args.quiet:
                print(f"capmill caption: wrote {embedded.written} images, skipped {embedded.skipped}", file=sys.stderr)
        if temporary:
            from capmill.run.runfolder import read_records

            for record in read_records(run_dir):
                sys.stdout.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    finally:
        if temporary:
            shutil.rmtree(run_dir, ignore_errors=True)
    if not args.quiet:
        run_info = summary.get("run", {})
        where = out_file or ("stdout" if temporary else run_dir)
        print(
            f"capmill caption: {run_info.get('records', 0)} records {run_info.get('by_status', {})} -> {where}",
            file=sys.stderr,
        )
    return 0
