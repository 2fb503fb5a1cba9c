"""Embedding distances between captions and references.

- per-pair FGD (Fréchet GTE Distance, the competition metric the BLIP-2 LoRA captioner was tuned for): the mean, over items, of the squared Euclidean distance between a
  caption's embedding and its reference's (with several references, the mean over them).
- set-level Frechet distance (FID-style): Gaussians fitted to the two sets of embeddings,
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).
The matrix square root goes through symmetric eigendecompositions, which stay stable for the singular
covariances that few samples in many dimensions always give; scipy's sqrtm (and its `disp` argument) is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pair_sq_distances(captions: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
    """Per item: mean squared distance from the caption's embedding (row) to each of its reference embeddings."""
    if len(captions) != len(refs):
        raise ValueError("one reference array per caption is needed")
    out = np.empty(len(captions))
    for i, (c, r) in enumerate(zip(captions, refs, strict=True)):
        r = np.atleast_2d(r)
        out[i] = float(np.mean(np.sum((r - c) ** 2, axis=1)))
    return out


def pairwise_fgd(captions: np.ndarray, refs: list[np.ndarray]) -> float:
    """Seed 004's per-pair FGD: mean over items of the caption-to-reference squared distance."""
    d = pair_sq_distances(captions, refs)
    return float(d.mean()) if len(d) else float("nan")


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues from rounding are zero."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) for PSD S1, S2, as tr((S1^{1/2} S2 S1^{1/2})^{1/2}): the two matrices are similar."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_from_moments(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, S1) and N(mu2, S2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("means and covariances must have matching dimensions")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)  # rounding can leave a tiny negative for identical distributions


def moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, as in FID) covariance of the rows of x."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("need at least two embeddings to fit a covariance")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Set-level Frechet distance between two sets of embeddings (rows)."""
    return frechet_from_moments(*moments(x), *moments(y))


@dataclass
class EmbeddingDistances:
    """Both distances for one run, labelled, with the per-item squared distances kept for the report."""

    pair_fgd: float
    set_frechet: float
    n: int
    per_item: dict[str, float]
    dim: int = 0
    reference_n: int = 0

    @property
    def set_frechet_underdetermined(self) -> bool:
        """Fewer captions (or pooled references) than embedding dimensions: the covariances are singular, so the
        set-level distance is biased upward and noisy, and comparable only between sets of the same size."""
        return bool(self.dim) and min(self.n, self.reference_n) < self.dim

    def as_dict(self) -> dict[str, object]:
        return {
            "pair_fgd": self.pair_fgd,
            "pair_fgd_label": "per-pair FGD (Fréchet GTE Distance): mean squared distance caption->reference embedding",
            "set_frechet": self.set_frechet,
            "set_frechet_label": "set-level Frechet distance (FID-style) between caption and reference embeddings",
            "n": self.n,
            "dim": self.dim,
            "reference_n": self.reference_n,
            "set_frechet_underdetermined": self.set_frechet_underdetermined,
        }

    def warning(self) -> str | None:
        """A sentence for the report when the set-level distance rests on too few items, else None."""
        if not self.set_frechet_underdetermined:
            return None
        return (
            f"set Frechet rests on {min(self.n, self.reference_n)} items in {self.dim} embedding dimensions "
            f"(fewer items than dimensions): it is biased and noisy, comparable only between runs of the same size; "
            f"prefer the per-pair FGD, or evaluate at least {self.dim} items"
        )


def embedding_distances(keys: list[str], captions: np.ndarray, refs: list[np.ndarray]) -> EmbeddingDistances:
    """Both distances; the set-level one compares the captions with all reference embeddings pooled."""
    d = pair_sq_distances(captions, refs)
    pooled = np.concatenate([np.atleast_2d(r) for r in refs]) if refs else np.zeros((0, captions.shape[1]))
    set_fd = frechet_distance(captions, pooled) if len(captions) >= 2 and len(pooled) >= 2 else float("nan")
    return EmbeddingDistances(
        pair_fgd=float(d.mean()) if len(d) else float("nan"),
        set_frechet=set_fd,
        n=len(keys),
        per_item={k: float(v) for k, v in zip(keys, d, strict=True)},
        dim=int(captions.shape[1]) if captions.ndim == 2 else 0,
        reference_n=len(pooled),
    )
