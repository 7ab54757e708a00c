"""Fréchet distance between Gaussians fitted to feature sets (the D of FID and FVD).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr (S1 S2)^(1/2)

The trace of the matrix square root is computed without ever forming a non-symmetric
matrix: S1 S2 is similar to the symmetric positive semi-definite A S2 A with
A = S1^(1/2) (A = V diag(sqrt(w)) V^T from the eigen-decomposition S1 = V diag(w) V^T),
so tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i(A S2 A)). Everything runs in float64 with
`numpy.linalg.eigh`. Unlike scipy.linalg.sqrtm of the product (pytorch-fid's route) there
is no imaginary residue to discard and singular covariances (fewer samples than feature
dimensions) need no regularisation.

The one epsilon: eigenvalues that exact arithmetic makes 0 come out of eigh as rounding
noise of either sign (relative size ~1e-16 of the largest). Every eigenvalue below
D x float64-eps x (largest magnitude) -- numpy's matrix_rank tolerance -- is set to 0
before its square root is taken (sqrt would turn 1e-16 noise into 1e-8 errors); one below
-NEGATIVE_TOLERANCE x (largest magnitude) means the input is not a covariance and raises.
`eps > 0` adds eps * I to both covariances (pytorch-fid's offset), for users who want to
match numbers computed that way; the default is 0.

`frechet_distance_to_samples` is the same distance when one side is a small sample set
(n rows, n <= D): with Xc the centred samples, S1 = Xc^T Xc / (n-1) and the non-zero
eigenvalues of S1 S2 are those of the n x n matrix Xc S2 Xc^T / (n-1), so the cost is
O(n D^2) instead of O(D^3). Avg-FID and B-FVD-16 evaluate one such set per block.

`GaussianStats` accumulates the mean and covariance of a stream of feature batches
(Chan et al.'s pairwise update of the centred sums, float64), so the features of a
3376-frame video, or of a whole reference data set, never sit in memory at once.
"""

from __future__ import annotations

import io
import os

import numpy as np

NEGATIVE_TOLERANCE = 1e-6


def _symmetric(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + m.T)


def _check_eigenvalues(w: np.ndarray, what: str) -> np.ndarray:
    """Eigenvalues of a PSD matrix, rounding noise zeroed: raises below -NEGATIVE_TOLERANCE
    x scale; sets to 0 everything below len(w) x float64 eps x scale (numpy's matrix_rank
    tolerance), since sqrt would amplify a 1e-16 noise eigenvalue to 1e-8."""
    scale = float(np.max(np.abs(w))) if w.size else 0.0
    if w.size and w.min() < -NEGATIVE_TOLERANCE * max(scale, 1e-300):
        raise ValueError(
            f"{what} is not positive semi-definite: eigenvalue {w.min():.3e} "
            f"(largest magnitude {scale:.3e})"
        )
    return np.where(w > len(w) * np.finfo(np.float64).eps * scale, w, 0.0)


def _psd_sqrt(s: np.ndarray, what: str) -> np.ndarray:
    w, v = np.linalg.eigh(_symmetric(s))
    w = _check_eigenvalues(w, what)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1 S2)^(1/2) of two covariance matrices, via the symmetric S1^½ S2 S1^½."""
    a = _psd_sqrt(sigma1, "sigma1")
    lam = np.linalg.eigvalsh(_symmetric(a @ sigma2 @ a))
    return float(np.sqrt(_check_eigenvalues(lam, "sigma1^1/2 sigma2 sigma1^1/2")).sum())


def _as_moments(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, np.float64).reshape(-1)
    sigma = np.asarray(sigma, np.float64)
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"{name}: covariance shape {sigma.shape} does not match mean {mu.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance has NaN or inf entries")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 0.0) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, sigma1 = _as_moments(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _as_moments(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    if eps:
        ridge = eps * np.eye(mu1.shape[0])
        sigma1, sigma2 = sigma1 + ridge, sigma2 + ridge
    diff = mu1 - mu2
    d = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(d, 0.0))


def frechet_distance_to_samples(samples, mu2, sigma2, eps: float = 0.0) -> float:
    """`frechet_distance` from the Gaussian fitted to `samples` (n, D), n >= 2 (unbiased
    covariance, as np.cov), to N(mu2, sigma2); O(n D^2) when n <= D."""
    x = np.asarray(samples, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples of shape (n, D), got {x.shape}")
    mu2, sigma2 = _as_moments(mu2, sigma2, "reference Gaussian")
    n, d = x.shape
    if d != mu2.shape[0]:
        raise ValueError(f"feature dimensions differ: {d} vs {mu2.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("samples have NaN or inf entries")
    mu1 = x.mean(axis=0)
    if n > d or eps:
        return frechet_distance(mu1, np.cov(x, rowvar=False), mu2, sigma2, eps)
    xc = (x - mu1) / np.sqrt(n - 1)
    small = _symmetric(xc @ sigma2 @ xc.T)
    lam = _check_eigenvalues(np.linalg.eigvalsh(small), "Xc sigma2 Xc^T")
    diff = mu1 - mu2
    dist = diff @ diff + np.sum(xc * xc) + np.trace(sigma2) - 2.0 * np.sqrt(lam).sum()
    return float(max(dist, 0.0))


class GaussianStats:
    """Running count, mean and covariance of feature vectors, fed in batches (float64)."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"GaussianStats: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self.mean = np.zeros(self.dim, np.float64)
        self._m2 = np.zeros((self.dim, self.dim), np.float64)  # sum of centred outer products

    def update(self, features) -> GaussianStats:
        """Adds a batch (k, dim) of feature vectors."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"GaussianStats({self.dim}): batch shape {x.shape} is not (k, {self.dim})"
            )
        if not np.isfinite(x).all():
            raise ValueError("GaussianStats: features have NaN or inf entries")
        k = x.shape[0]
        if k == 0:
            return self
        batch_mean = x.mean(axis=0)
        xc = x - batch_mean
        self._combine(k, batch_mean, xc.T @ xc)
        return self

    def _combine(self, k: int, mean: np.ndarray, m2: np.ndarray) -> None:
        n = self.count + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.count * k / n)
        self.count = n

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Adds the vectors `other` has seen (as if fed to this accumulator)."""
        if other.dim != self.dim:
            raise ValueError(f"GaussianStats: cannot merge dim {other.dim} into {self.dim}")
        if other.count:
            self._combine(other.count, other.mean, other._m2)
        return self

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (divides by count - 1, as np.cov); needs count >= 2."""
        if self.count < 2:
            raise ValueError(f"GaussianStats: covariance needs >= 2 vectors, have {self.count}")
        return self._m2 / (self.count - 1)

    def frechet_distance(self, other: GaussianStats, eps: float = 0.0) -> float:
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance, eps)

    def save(self, path: str | os.PathLike, **info: str) -> None:
        """Writes count, mean, covariance and string `info` to an .npz, atomically."""
        from nuwa_jax.data.schema import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(
            buf,
            count=np.int64(self.count),
            mean=self.mean,
            m2=self._m2,
            **{f"info_{k}": np.array(v) for k, v in info.items()},
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[GaussianStats, dict[str, str]]:
        """(stats, info) written by `save`."""
        with np.load(path) as z:
            mean = z["mean"]
            stats = cls(mean.shape[0])
            stats.count, stats.mean, stats._m2 = int(z["count"]), mean, z["m2"]
            info = {k[5:]: str(z[k]) for k in z.files if k.startswith("info_")}
        return stats, info
