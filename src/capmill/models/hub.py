"""Fetch one file from the Hugging Face hub, quickly failing when the hub is unreachable (cache still works)."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=4)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the endpoint does not accept a connection within `timeout`."""
    if _offline_env():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _reachable(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80), timeout)


def hub_file(repo_id: str, filename: str, repo_type: str | None = None) -> str:
    """Local path of a hub file: downloaded when the hub is reachable, else from the local cache only.

    Raises whatever huggingface_hub raises; callers turn it into their own typed error. Checking reachability
    first turns a 20-second retry loop offline into an immediate answer.
    """
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, repo_type=repo_type, local_files_only=not hub_reachable())
