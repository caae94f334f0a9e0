"""Fréchet distance and streaming feature statistics: closed forms, a float64 reference, batch invariance, errors."""

import numpy as np
import pytest
from fastsamplers.experiments.metrics import frechet
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_moments


def random_moments(rng, dim):
    a, b = rng.standard_normal((dim, dim)), rng.standard_normal((dim, dim))
    return rng.standard_normal(dim), a @ a.T / dim + 0.1 * np.eye(dim), rng.standard_normal(dim), b @ b.T / dim


def reference_distance(mu1, s1, mu2, s2):
    """Float64 reference through the symmetric form tr((S1^1/2 S2 S1^1/2)^1/2), eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    w2 = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(w2, 0, None))))


@pytest.mark.parametrize("dim", [1, 5, 64])
def test_matches_float64_reference_on_random_statistics(dim):
    rng = np.random.default_rng(dim)
    for _ in range(3):
        mu1, s1, mu2, s2 = random_moments(rng, dim)
        value = frechet_distance_from_moments(mu1, s1, mu2, s2)
        assert value == pytest.approx(reference_distance(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
        assert value == pytest.approx(frechet_distance_from_moments(mu2, s2, mu1, s1), rel=1e-9)  # symmetric


def test_closed_forms():
    # Equal covariances: only the means count. Commuting (diagonal) covariances: |sqrt(s1) - sqrt(s2)|^2 per axis.
    mu = np.array([1.0, -2.0, 0.5])
    s = np.diag([1.0, 4.0, 9.0])
    assert frechet_distance_from_moments(mu, s, np.zeros(3), s) == pytest.approx(np.sum(mu**2), rel=1e-12)
    s2 = np.diag([4.0, 1.0, 9.0])
    assert frechet_distance_from_moments(mu, s, mu, s2) == pytest.approx((1 - 2) ** 2 + (2 - 1) ** 2, abs=1e-10)


def test_statistics_equal_numpy_and_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 7)) * 3 + 5
    whole = FeatureStats.from_features(x)
    np.testing.assert_allclose(whole.mean, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(whole.covariance, np.cov(x, rowvar=False), rtol=1e-12)
    stats = FeatureStats.empty(7)
    for chunk in np.array_split(x, [1, 2, 50, 333, 999]):  # uneven batches, including a single row
        stats = stats.update(chunk)
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(stats.covariance, whole.covariance, rtol=1e-11)
    halves = FeatureStats.from_features(x[:400]).merge(FeatureStats.from_features(x[400:]))
    np.testing.assert_allclose(halves.covariance, whole.covariance, rtol=1e-11)


def test_save_load_round_trip(tmp_path):
    x = np.random.default_rng(1).standard_normal((50, 4))
    stats = FeatureStats.from_features(x)
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    assert loaded.count == 50
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-13)
    assert frechet_distance(loaded, stats) == pytest.approx(0.0, abs=1e-9)
    np.savez(tmp_path / "bad.npz", mean=stats.mean)
    with pytest.raises(ValueError, match="not a statistics file"):
        FeatureStats.load(tmp_path / "bad.npz")


def test_singular_covariances():
    # Rank-deficient covariances (fewer samples than dimensions): still the distance of the float64 reference.
    rng = np.random.default_rng(2)
    a = FeatureStats.from_features(rng.standard_normal((5, 20)))
    b = FeatureStats.from_features(rng.standard_normal((5, 20)))
    value = frechet_distance(a, b)
    assert value == pytest.approx(reference_distance(a.mean, a.covariance, b.mean, b.covariance), rel=1e-4)


def test_clear_errors():
    with pytest.raises(ValueError, match="non-finite"):
        FeatureStats.from_features(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        FeatureStats.from_features(np.zeros(3))
    with pytest.raises(ValueError, match="dimension"):
        FeatureStats.empty(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = FeatureStats.from_features(np.zeros((1, 3))).covariance
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(FeatureStats.from_features(np.eye(3)), FeatureStats.from_features(np.eye(4)))


def test_extrapolated_fd_removes_the_finite_sample_bias():
    """Features from N(0, I) against the exact N(0, I): the true FD is 0 and FD at n samples is biased up by about
    (d + d^2 / 4) / n. FD_inf, fitted on nested subsets, lands closer to 0 than FD on all samples (fixed seeds)."""
    dim = 8
    reference = frechet.FeatureStats(10**9, np.zeros(dim), np.eye(dim) * (10**9 - 1))
    fd_inf, fd_500, fd_all = [], [], []
    for seed in range(10):
        features = np.random.default_rng(seed).standard_normal((8000, dim))
        value, by_n = frechet.frechet_distance_extrapolated(features, reference, sizes=(500, 1000, 2000, 4000))
        assert sorted(by_n) == [500, 1000, 2000, 4000, 8000]
        fd_inf.append(abs(value))
        fd_500.append(by_n[500])
        fd_all.append(by_n[8000])
    assert np.mean(fd_500) > 10 * np.mean(fd_all) > 0  # the bias shrinks as 1 / n
    assert np.mean(fd_inf) < 0.8 * np.mean(fd_all)
    value, by_n = frechet.frechet_distance_extrapolated(np.random.default_rng(0).standard_normal((100, dim)),
                                                        reference)
    assert value is None and list(by_n) == [100]  # every subset size is above the 100 samples: no fit
    with pytest.raises(ValueError):
        frechet.frechet_distance_extrapolated(np.ones((10, 3)), frechet.FeatureStats.empty(4))
