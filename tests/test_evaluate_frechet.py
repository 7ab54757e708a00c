"""Fréchet distance: closed forms, scipy's sqrtm route, the low-rank sample route and the
streaming accumulator."""

import numpy as np
import pytest
import scipy.linalg

from nuwa_jax.evaluate import frechet


def _scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 17):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
        ours = frechet.frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_closed_forms():
    rng = np.random.default_rng(1)
    d = 12
    mu, s = rng.normal(size=d), _random_cov(rng, d)
    assert frechet.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    shift = rng.normal(size=d)
    assert frechet.frechet_distance(mu, s, mu + shift, s) == pytest.approx(shift @ shift, rel=1e-9)
    # Commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.frechet_distance(mu, np.diag(a), mu, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-9)
    # Symmetric in its arguments.
    s2 = _random_cov(rng, d)
    assert frechet.frechet_distance(mu, s, 0 * mu, s2) == pytest.approx(
        frechet.frechet_distance(0 * mu, s2, mu, s), rel=1e-9
    )


def test_identical_feature_sets_give_zero():
    x = np.random.default_rng(2).normal(size=(50, 8))
    a = frechet.GaussianStats(8).update(x)
    b = frechet.GaussianStats(8).update(x[::-1])
    assert a.frechet_distance(b) == pytest.approx(0.0, abs=1e-9)
    assert frechet.frechet_distance_to_samples(x, a.mean, a.covariance) == pytest.approx(
        0, abs=1e-9
    )


def test_singular_covariances_match_scipy():
    """Fewer samples than dimensions: both covariances rank-deficient."""
    rng = np.random.default_rng(3)
    d = 20
    x, y = rng.normal(size=(6, d)), rng.normal(size=(9, d)) + 0.5
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    ours = frechet.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours)
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_sample_route_equals_full_route():
    rng = np.random.default_rng(4)
    d = 30
    ref = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.3
    mu2, s2 = ref.mean(0), np.cov(ref, rowvar=False)
    for n in (2, 5, 16, 29, 31, 64):  # below, at and above the n <= D switch
        x = rng.normal(size=(n, d)) + 1.0
        full = frechet.frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu2, s2)
        fast = frechet.frechet_distance_to_samples(x, mu2, s2)
        assert fast == pytest.approx(full, rel=1e-8), n
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet.frechet_distance_to_samples(x[:1], mu2, s2)


def test_eps_ridge_and_bad_inputs():
    rng = np.random.default_rng(5)
    mu, s = np.zeros(4), _random_cov(rng, 4)
    ridge = 1e-3 * np.eye(4)
    assert frechet.frechet_distance(mu, s, mu + 1, 2 * s, eps=1e-3) == pytest.approx(
        frechet.frechet_distance(mu, s + ridge, mu + 1, 2 * s + ridge), rel=1e-12
    )
    not_psd = np.diag([1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet.frechet_distance(mu, not_psd, mu, s)
    with pytest.raises(ValueError, match="does not match mean"):
        frechet.frechet_distance(mu, s[:3, :3], mu, s)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet.frechet_distance(mu, s, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet.frechet_distance(mu * np.nan, s, mu, s)


def test_streaming_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(103, 7)) * 1e3 + 5e4  # large offset: a naive sum of squares loses digits
    stats = frechet.GaussianStats(7)
    for chunk in np.array_split(x, [1, 2, 40, 41, 90]):  # ragged, including 1-row batches
        stats.update(chunk)
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9)
    # Merge is order-free.
    a, b = frechet.GaussianStats(7).update(x[:50]), frechet.GaussianStats(7).update(x[50:])
    np.testing.assert_allclose(b.merge(a).covariance, stats.covariance, rtol=1e-9)
    # Round trip through a file.
    stats.save(tmp_path / "s.npz", extractor="pixels")
    loaded, info = frechet.GaussianStats.load(tmp_path / "s.npz")
    assert info == {"extractor": "pixels"} and loaded.count == 103
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)
    with pytest.raises(ValueError, match=r"is not \(k, 7\)"):
        stats.update(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="needs >= 2"):
        _ = frechet.GaussianStats(3).update(np.zeros((1, 3))).covariance
