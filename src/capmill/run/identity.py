"""What identifies a run's outputs beyond the prompt and decoding: the model as resolved, and library versions.

A local model folder is identified by its absolute path plus a fingerprint of its config.json and its weights'
index (file names and sizes), so a different checkpoint saved at the same path is noticed; a hub id by the
resolved revision (the snapshot the local cache holds) when it is known. Library versions are recorded beside
the configuration, not in it: a change is reported, not refused.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
LIBRARIES = ("capmill", "torch", "transformers", "vllm")


def resolve_model(model: str) -> dict[str, Any]:
    """{"model": absolute path, "fingerprint": ...} for a local folder; {"model": hub id, "revision": ...}."""
    if os.path.isdir(model):
        return {"model": os.path.abspath(model), "fingerprint": folder_fingerprint(model)}
    return {"model": model, "revision": hub_revision(model)}


def folder_fingerprint(path: str) -> str:
    """sha256 (16 hex) over config.json, the weight index files and every weight file's name and size."""
    digest = hashlib.sha256()
    names = sorted(os.listdir(path))
    for name in ("config.json", *INDEX_FILES):
        if name in names:
            with open(os.path.join(path, name), "rb") as handle:
                digest.update(name.encode() + b"\0" + handle.read() + b"\0")
    for name in names:
        if name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"{name}:{os.path.getsize(os.path.join(path, name))}\0".encode())
    return digest.hexdigest()[:16]


def hub_revision(repo_id: str) -> str | None:
    """The commit of the snapshot the Hugging Face cache holds for this model, if any (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id: nothing known
        return None
    if not isinstance(found, str):
        return None
    parent = os.path.basename(os.path.dirname(found))  # .../snapshots/<commit>/config.json
    return parent if os.path.basename(os.path.dirname(os.path.dirname(found))) == "snapshots" else None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape captions (None: not installed); nothing is imported."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
