"""`--engine-option KEY=VALUE` (repeatable) and `--engine-config FILE.yaml`: any engine option from the command line.

Values are typed as JSON where they parse (`max_num_seqs=64`, `enforce_eager=true`,
`limit_mm_per_prompt={"image":2}`), else kept as text (`quantization=awq`). A dotted key sets a nested value
(`engine_args.max_num_batched_tokens=8192`). The YAML file gives a mapping of the same keys; options on the command line win over
the file. The engine validates the result and names the keys it accepts (capmill.engines.base).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError

OPTION_HELP = (
    'engine option KEY=VALUE, repeatable; VALUE is JSON where it parses (64, true, {"image": 2}), else text; '
    "a.b=V sets a nested key; a wrong key is an error listing the engine's keys (see docs/gpu.md)"
)
CONFIG_HELP = "YAML file with a mapping of engine options (command-line --engine-option values win)"


def add_arguments(group: Any, option: str = "--engine-option", config: str = "--engine-config") -> None:
    """Add the two flags to a parser or argument group (eval uses other names for its answerer)."""
    group.add_argument(option, action="append", default=[], metavar="KEY=VALUE", help=OPTION_HELP)
    group.add_argument(config, metavar="FILE.yaml", help=CONFIG_HELP)


def typed_value(text: str) -> Any:
    """JSON where the text parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(pairs: list[str] | None, flag: str = "--engine-option") -> dict[str, Any]:
    """`["a=1", "b.c=x"]` -> `{"a": 1, "b": {"c": "x"}}`; ConfigError naming the pair when one is malformed."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"{flag} {pair!r}: empty part in key {key!r}")
        target = out
        for part in parts[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{flag} {pair!r}: {part!r} was given a value, so it cannot hold keys")
            target = nested
        target[parts[-1]] = typed_value(value)
    return out


def read_config(path: str | None, flag: str = "--engine-config") -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file; ConfigError naming the file when it is missing or not a mapping."""
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"{flag} {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`; nested mappings merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def engine_options(
    args: argparse.Namespace,
    flags: dict[str, Any] | None = None,
    option_attr: str = "engine_option",
    config_attr: str = "engine_config",
) -> dict[str, Any]:
    """The engine options of a command: the file, then --engine-option pairs, then the dedicated flags
    (`--device`, `--dtype`: `flags`); a dedicated flag and an option giving the same key two values is an error."""
    option_flag = "--" + option_attr.replace("_", "-")
    config_flag = "--" + config_attr.replace("_", "-")
    options = deep_merge(
        read_config(getattr(args, config_attr, None), config_flag),
        parse_pairs(getattr(args, option_attr, None), option_flag),
    )
    for key, value in (flags or {}).items():
        if value is None or value is False:
            continue
        if key in options and options[key] != value:
            raise ConfigError(f"--{key.replace('_', '-')} {value} and engine option {key}={options[key]} disagree")
        options[key] = value
    return options


def check(engine: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the options against the engine's own before any work starts (EngineOptionError lists its keys)."""
    from capmill.engines import ENGINES

    name = engine or "transformers"
    try:
        cls = ENGINES.get(name)
    except ModuleNotFoundError:
        return options  # an engine whose module is not in this build: its own error comes when it is made
    cls.Options.checked(name, options)
    return options
