"""`capmill eval RESULTS... --refs REFS`: reference metrics, embedding distances, structure, QA utility; side by side."""

from __future__ import annotations

import argparse
import math
from typing import Any

from capmill.cli.engine_options import add_arguments as add_engine_option_arguments
from capmill.cli.engine_options import engine_options as parsed_engine_options
from capmill.errors import ConfigError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS", help="run folders or JSONL files of records")
    p.add_argument("--refs", help="reference captions: COCO caption annotations (.json) or JSONL")
    p.add_argument("--names", help="comma-separated display names for the runs, in order")
    p.add_argument(
        "--metrics",
        default="all",
        help="COCO metrics, comma-separated: bleu,meteor,rouge,cider,spice, 'all' or 'none' (default all)",
    )
    p.add_argument(
        "--embedder",
        default="thenlper/gte-small",
        help="sentence embedder (hub id or path; 'all-MiniLM-L6-v2' = bundled copy; 'none' to skip). One that "
        "cannot be loaded (offline, not cached) is replaced by the bundled copy, with a note in the report",
    )
    p.add_argument(
        "--clip-model",
        metavar="MODEL",
        help="CLIP-family model (hub id or folder, Hugging Face format) for the reference-free CLIPScore of each "
        "caption against its photo; a LongCLIP-style model scores long captions whole",
    )
    p.add_argument("--clip-device", default="cpu", help="device of the CLIP model (default cpu)")
    p.add_argument("--normalize-embeddings", action="store_true", help="L2-normalise embeddings before distances")
    p.add_argument(
        "--length-tokenizer",
        action="append",
        metavar="NAME=ID[:LIMIT]",
        help="exact tokenizer for a length column, e.g. t5=google/flan-t5-xl (repeatable)",
    )
    p.add_argument("--qa", metavar="QA.jsonl", help="questions for the QA utility (CapRL/Prism)")
    p.add_argument("--answerer", metavar="MODEL", help="answerer model for --qa (hub id, path or served name)")
    p.add_argument("--answerer-engine", default="openai", help="engine of the answerer (default openai)")
    p.add_argument("--answerer-url", help="base URL of an OpenAI-compatible server for the answerer")
    p.add_argument("--answerer-profile", default="generic", help="capmill profile for the answerer (default generic)")
    add_engine_option_arguments(p, "--answerer-option", "--answerer-config")
    p.add_argument("--qa-samples", type=int, default=4, help="samples per question, options reshuffled (default 4)")
    p.add_argument("--qa-temperature", type=float, default=0.6, help="answerer temperature; 0 = greedy (default 0.6)")
    p.add_argument("--qa-max-tokens", type=int, default=16, help="answerer max new tokens (default 16)")
    p.add_argument("--qa-seed", type=int, default=0)
    p.add_argument("--worst", type=int, default=20, help="items per run on the weakest-items page (default 20)")
    p.add_argument("--out", default="eval-report", help="output folder (default eval-report)")


def build_answerer(args: argparse.Namespace) -> Any:
    """The answerer engine, through the engine registry (never by branching on its name)."""
    from capmill.engines import ENGINES
    from capmill.models.catalog import get_profile

    options = parsed_engine_options(args, {"base_url": args.answerer_url}, "answerer_option", "answerer_config")
    try:
        engine_cls = ENGINES.get(args.answerer_engine)
    except ModuleNotFoundError as exc:  # a registered engine whose module is not in this build or its extra
        raise ConfigError(f"answerer engine {args.answerer_engine!r} cannot be loaded: {exc}") from exc
    return engine_cls(args.answerer, get_profile(args.answerer_profile), options)


def run(args: argparse.Namespace) -> int:
    from capmill.eval.coco_metrics import check_java, parse_metrics
    from capmill.eval.lengths import length_encoders, parse_overrides
    from capmill.eval.qa_utility import load_qa
    from capmill.eval.refs import load_references
    from capmill.eval.report import write_report
    from capmill.eval.results import load_runs
    from capmill.eval.suite import EvalConfig, evaluate_runs
    from capmill.records import Decoding

    # Configuration errors surface here, before any scoring starts.
    metrics_arg = [m.strip() for m in args.metrics.split(",") if m.strip()]
    coco = metrics_arg != ["none"]
    metrics = parse_metrics(metrics_arg) if coco else []
    if coco and args.refs:
        check_java()
    if args.qa and not args.answerer:
        raise ConfigError("--qa needs --answerer MODEL")
    if args.qa_samples < 1:
        raise ConfigError("--qa-samples must be at least 1")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    runs = load_runs(args.results, names)
    refs = load_references(args.refs) if args.refs else None
    qa_items = load_qa(args.qa) if args.qa else None
    encoders = length_encoders(parse_overrides(args.length_tokenizer))
    embedder, notes = None, []
    if refs is not None and args.embedder.lower() != "none":
        from capmill.eval.embeddings import load_embedder

        embedder, notes = load_embedder(args.embedder, normalize=args.normalize_embeddings)
    image_text = None
    if args.clip_model:
        from capmill.quality.clip_score import ClipScorer

        image_text = ClipScorer(args.clip_model, device=args.clip_device)
    answerer = build_answerer(args) if qa_items else None
    greedy = args.qa_temperature == 0
    config = EvalConfig(
        metrics=metrics,
        coco=coco and refs is not None,
        notes=notes,
        image_text=image_text,
        embedder=embedder,
        encoders=encoders,
        qa_items=qa_items,
        answerer=answerer,
        qa_samples=args.qa_samples,
        qa_seed=args.qa_seed,
        qa_decoding=Decoding(
            max_new_tokens=args.qa_max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else args.qa_temperature,
            top_p=None if greedy else 1.0,
        ),
    )
    try:
        data = evaluate_runs(runs, refs, config)
    finally:
        if answerer is not None:
            answerer.close()
    index = write_report(data, args.out, worst=args.worst)
    _print_summary(data)
    print(f"report: {index}\nmetrics: {index.parent / 'metrics.json'}")
    return 0


def _print_summary(data: dict[str, Any]) -> None:
    from capmill.eval.suite import headline

    heads = {n: headline(r) for n, r in data["runs"].items()}
    keys = list(dict.fromkeys(k for h in heads.values() for k in h))
    width = max([len(k) for k in keys] + [6])
    print("metric".ljust(width) + "".join(f"  {n[:14]:>14}" for n in heads))
    for k in keys:
        vals = [heads[n].get(k, float("nan")) for n in heads]
        print(k.ljust(width) + "".join(f"  {'-' if math.isnan(v) else f'{v:.4f}':>14}" for v in vals))
    for note in data.get("notes", []):
        print(f"note: {note}")
