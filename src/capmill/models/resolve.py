"""Choose a profile and a family for a checkpoint: by name, else from the hub id or folder, else from its config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError, ModelLoadError
from capmill.models.catalog import GENERIC, all_profiles, get_profile
from capmill.models.profile import Profile

# written by `capmill merge` into the merged folder: its faithfulness report and the profile it runs under
MERGE_FILE = "capmill_merge.json"

# config.json model_type -> capmill family
MODEL_TYPE_FAMILY = {
    "qwen3_5": "qwen3_5",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "internvl": "internvl",
    "internvl_chat": "internvl",
    "blip-2": "blip2",
}


def _last_part(model: str) -> str:
    return model.rstrip("/\\").replace("\\", "/").split("/")[-1].lower()


def read_model_config(model: str) -> dict[str, Any]:
    """config.json of a local folder, or of a hub id through huggingface_hub (its cache works offline)."""
    path = Path(model)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelLoadError(f"{model}: no config.json in this folder (is it a saved Hugging Face model?)")
        return json.loads(config.read_text(encoding="utf-8"))
    if path.exists():
        raise ModelLoadError(f"{model}: is a file; give a model folder or a hub id")
    try:
        from capmill.models.hub import hub_file

        local = hub_file(model, "config.json")
    except Exception as exc:  # offline, unknown repo, gated: all mean "cannot read it"
        raise ModelLoadError(
            f"{model}: not a local folder and its config.json could not be fetched from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return json.loads(Path(local).read_text(encoding="utf-8"))


def family_of_config(config: dict[str, Any]) -> str:
    """The capmill family of a checkpoint's config ("generic" for any other image-text-to-text model)."""
    return MODEL_TYPE_FAMILY.get(str(config.get("model_type", "")), "generic")


def profile_by_checkpoint_name(model: str) -> Profile | None:
    """The named profile whose checkpoint has this name (hub id or a local folder named like it)."""
    name = _last_part(model)
    for profile in all_profiles():
        names = [p for p in (profile.default_model, *profile.aliases) if p]
        if any(_last_part(n) == name for n in names):
            return profile
    return None


def recorded_profile(model: str) -> Profile | None:
    """The profile a local checkpoint folder records for itself (a `capmill merge` output), if any."""
    path = Path(model) / MERGE_FILE if model else None
    if path is None or not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("profile")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); pass --profile to choose the profile") from exc
    return get_profile(name) if name else None


def resolve_profile(model: str, profile: str | Profile | None = None) -> Profile:
    """A profile given by name or object wins; else the one the folder records (a merge); else the checkpoint's
    name; else `generic`."""
    if isinstance(profile, Profile):
        return profile
    if profile:
        return get_profile(profile)
    return recorded_profile(model) or profile_by_checkpoint_name(model) or GENERIC


def resolve_family(model: str, profile: Profile, config: dict[str, Any] | None = None) -> str:
    """The family to use: the profile's, checked against the checkpoint's config when it is readable."""
    if config is None:
        try:
            config = read_model_config(model)
        except ModelLoadError:
            if profile.family:
                return profile.family  # trust the profile; loading will say what is wrong
            raise
    found = family_of_config(config)
    if profile.family and found != "generic" and found != profile.family:
        compatible = {profile.family, found} <= {"qwen2_vl", "qwen2_5_vl"}
        if not compatible:
            raise ConfigError(
                f"profile {profile.name!r} is for {profile.family} models but {model} is "
                f"{config.get('model_type')!r}; pass --profile generic or the matching profile"
            )
        return found
    return profile.family or found
