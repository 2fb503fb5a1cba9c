"""`capmill serve`: an OpenAI-compatible captioning server with dynamic batching and a web gallery."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from capmill.cli.caption import EXACT_HELP, exact_options
from capmill.cli.engine_options import add_arguments as add_engine_option_arguments
from capmill.cli.engine_options import check as check_engine_options
from capmill.cli.engine_options import engine_options as parsed_engine_options


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="hub id or local folder of the checkpoint (optional with --browse)")
    parser.add_argument("--profile", help="model profile (default: inferred from the model)")
    parser.add_argument("--engine", default="transformers", help="engine name (default: transformers)")
    parser.add_argument("--served-model-name", action="append", default=[], metavar="NAME",
                        help="name clients send as 'model' (repeatable; default: the profile name and model id)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("CAPMILL_API_KEY"),
                        help="require this key on every route but /healthz (default: $CAPMILL_API_KEY)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=8, help="most requests per engine batch (default 8)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0,
                        help="longest a request waits for others to share its batch (default 10)")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MB)")
    parser.add_argument("--max-image-mb", type=float, default=16.0, help="largest image (default 16 MB)")
    parser.add_argument("--max-image-pixels", type=int, default=50_000_000)
    parser.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a client may ask")
    parser.add_argument("--allow-url-images", action="store_true", help="fetch http(s) image_url values")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="with --allow-url-images: also fetch from loopback and private addresses")  # fmt: skip
    parser.add_argument("--allow-url-host", action="append", default=[], metavar="HOST",
                        help="with --allow-url-images: fetch only from these hosts (name, *.domain or CIDR), "
                             "wherever they resolve (repeatable)")  # fmt: skip
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without --api-key (anyone who reaches it may use it)")  # fmt: skip
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                        help="set another server limit, e.g. max_stop_sequences=16 (docs/serve.md lists them)")  # fmt: skip
    parser.add_argument("--browse-root", action="append", default=[], type=Path, metavar="DIR",
                        help="with --browse: also show images under DIR (default: the run's input folders)")  # fmt: skip
    parser.add_argument("--constrained", action="store_true",
                        help="tool-call profiles (json-captioner): hold /v1/captions output to the tool's schema")  # fmt: skip
    parser.add_argument("--browse", type=Path, metavar="RUN_DIR", help="show this run folder's results in the gallery")
    parser.add_argument("--device", help="device for the model (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", help="model dtype (default: the profile's)")
    parser.add_argument("--exact", action="store_true", help=EXACT_HELP)
    add_engine_option_arguments(parser)
    parser.add_argument("--scaffold", help="JSON captioner scaffold file (system prompt + tools)")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens per caption (default: the profile's)")
    parser.add_argument("--log-level", default="info")


def config_from_args(args: argparse.Namespace):  # noqa: ANN201
    from capmill.errors import ConfigError
    from capmill.serve.config import MiB, ServeConfig

    if not args.model and not args.browse:
        raise ConfigError("capmill serve needs --model M (to caption) or --browse RUN_DIR (to look at a run)")
    options: dict = {"scaffold": args.scaffold} if args.scaffold else {}
    flags = {k: getattr(args, k, None) for k in ("device", "dtype")}
    engine_options = parsed_engine_options(args, {**flags, **exact_options(args.engine, getattr(args, "exact", False))})
    check_engine_options(args.engine, engine_options)
    if engine_options:
        options["engine_options"] = engine_options
    if args.max_new_tokens:
        options["decoding"] = {"max_new_tokens": args.max_new_tokens}
    extra = {}
    for spec in getattr(args, "limit", []):
        name, sep, value = spec.partition("=")
        if not sep or name not in LIMIT_NAMES:
            raise ConfigError(f"--limit {spec}: expected NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}")
        extra[name] = value
    config = ServeConfig(
        model=args.model,
        profile=args.profile,
        engine=args.engine,
        captioner_options=options,
        served_model_names=args.served_model_name,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        request_timeout_s=args.timeout,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_tokens_limit=args.max_tokens_limit,
        allow_url_images=args.allow_url_images,
        allow_private_urls=args.allow_private_urls,
        constrained=args.constrained,
        browse_dir=args.browse,
        browse_roots=getattr(args, "browse_root", []),
        url_allow_hosts=getattr(args, "allow_url_host", []),
        insecure=getattr(args, "insecure", False),
    )
    return ServeConfig.model_validate({**config.model_dump(), **extra}) if extra else config


LIMIT_NAMES = (
    "max_messages",
    "max_text_chars",
    "max_stop_sequences",
    "max_stop_chars",
    "max_grammar_bytes",
    "grammar_timeout_s",
    "grammar_cache_size",
    "receive_timeout_s",
    "max_inflight_per_client",
    "max_images_per_request",
    "url_timeout_s",
)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from capmill.errors import ConfigError, MissingDependencyError

    try:
        import uvicorn

        from capmill.serve.app import create_app
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "fastapi", "serve", "capmill serve") from exc
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        raise ConfigError(f"bad serve option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    check_exposure(config)
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0


def check_exposure(config) -> None:  # noqa: ANN001
    """Refuse to listen beyond this machine without an API key, unless told --insecure."""
    import ipaddress
    import logging

    from capmill.errors import ConfigError

    host = config.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or config.api_key:
        return
    if not config.insecure:
        raise ConfigError(
            f"--host {config.host} accepts connections from other machines, and no --api-key is set: anyone who "
            "reaches it could use the model and the gallery. Set --api-key KEY (or $CAPMILL_API_KEY), or pass "
            "--insecure to serve without one"
        )
    logging.getLogger("capmill.serve").warning(
        "serving on %s WITHOUT an API key (--insecure): anyone who reaches it may use it", config.host
    )
