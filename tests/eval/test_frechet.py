"""Frechet distance against closed forms (diagonal, rotated, singular, 1-D) and the per-pair FGD by hand."""

from __future__ import annotations

import numpy as np
import pytest

from capmill.eval.frechet import (
    embedding_distances,
    frechet_distance,
    frechet_from_moments,
    pair_sq_distances,
    pairwise_fgd,
    trace_sqrt_product,
)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_diagonal_gaussians_match_closed_form():
    # For commuting covariances: ||mu1-mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([2.0, 1.0, 1.0, 16.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_rotated_commuting_covariances_match_closed_form():
    q = _rotation(6, 0)
    a, b = np.array([3.0, 2.0, 1.0, 0.5, 0.1, 7.0]), np.array([1.0, 1.0, 4.0, 0.5, 2.0, 0.3])
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = np.zeros(6)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_moments(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_match_closed_form():
    # rank-deficient: zero variances on some axes, rotated so the zeros are not on the diagonal
    q = _rotation(5, 1)
    a, b = np.array([2.0, 0.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 3.0, 1.0, 0.0])
    mu1, mu2 = np.arange(5.0), np.arange(5.0)[::-1]
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_from_moments(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(got)


def test_one_dimensional_gaussians():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) = (m1-m2)^2 + (s1-s2)^2
    assert frechet_from_moments(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]])) == (
        pytest.approx(4.0 + 1.0)
    )


def test_non_commuting_full_rank_against_eigen_free_reference():
    # tr((S1 S2)^{1/2}) = sum of sqrt of the eigenvalues of S1 S2 (real, non-negative for PSD S1, S2)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 7)), rng.normal(size=(7, 7))
    s1, s2 = a @ a.T + 0.1 * np.eye(7), b @ b.T
    reference = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)))
    assert trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-9)
    assert trace_sqrt_product(s2, s1) == pytest.approx(reference, rel=1e-9)


def test_identical_sets_give_zero_and_few_samples_stay_finite():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 384))  # 10 samples in 384 dims: covariance of rank 9
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    y = x + 1.0
    assert frechet_distance(x, y) == pytest.approx(384.0, rel=1e-6)  # pure shift: ||mu1-mu2||^2
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)


def test_pairwise_fgd_by_hand():
    caps = np.array([[0.0, 0.0], [1.0, 1.0]])
    refs = [np.array([[3.0, 4.0]]), np.array([[1.0, 1.0], [1.0, 3.0]])]
    d = pair_sq_distances(caps, refs)
    assert d.tolist() == [25.0, 2.0]  # second: mean of 0 and 4
    assert pairwise_fgd(caps, refs) == 13.5
    dist = embedding_distances(["a", "b"], caps, refs)
    assert dist.per_item == {"a": 25.0, "b": 2.0}
    assert dist.as_dict()["pair_fgd"] == 13.5 and "Fréchet GTE Distance" in dist.as_dict()["pair_fgd_label"]
