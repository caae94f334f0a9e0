"""Fréchet distance between Gaussians fitted to feature sets, with streaming feature statistics.

The Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

(Dowson & Landau 1982). FID (Heusel et al. 2017) is this distance between Inception pool features of real and
generated images; FD-digits (`experiments.metrics.fd_digits`) uses a small digits classifier's features instead. The
matrix square root is computed as the standard tools compute it (`scipy.linalg.sqrtm` of S1 S2 in float64; if the
product is singular, both covariances get 1e-6 added on the diagonal; an imaginary part above 1e-3 is an error,
a smaller one is dropped), so our numbers are comparable with theirs.

Statistics are accumulated in float64 over batches with Chan et al.'s pairwise update of the mean and the centred
second moment, so feeding the features in one batch or in many gives the same mean and covariance (to rounding).
The covariance is the unbiased one (divided by n - 1), as numpy's `np.cov(features, rowvar=False)`. Samples that
hold NaN or Inf are counted and left out (`FeatureStats.update(features, finite)`), never averaged in: the one NaN
policy of every Fréchet distance of the project.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> stats = FeatureStats.from_features(rng.standard_normal((500, 3)))
>>> abs(frechet_distance(stats, stats)) < 1e-8
True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastsamplers.core import write_npz


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Count, mean and centred second moment (sum of outer products of deviations) of d-dimensional features, and
    the number of samples left out as non-finite.

    The NaN policy of every Fréchet distance here, in one place: `update(features, finite)` counts the samples
    whose `finite` entry is False in `num_nonfinite` and leaves them out of the moments (a sampler's failures are
    reported beside the distance, never averaged into it); features of samples marked finite must be finite.
    """

    count: int  # the samples in the moments
    mean: np.ndarray  # (d,) float64
    m2: np.ndarray  # (d, d) float64: sum_i (x_i - mean)(x_i - mean)^T
    num_nonfinite: int = 0  # samples left out

    @classmethod
    def empty(cls, dim):
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def from_features(cls, features, finite=None):
        """Statistics of an (n, d) array of features (`finite`: see `update`)."""
        return cls.empty(_check_features(features, finite).shape[1]).update(features, finite)

    @property
    def dim(self):
        return self.mean.shape[0]

    @property
    def num_samples(self):
        """Every sample seen: those in the moments and those left out."""
        return self.count + self.num_nonfinite

    @property
    def covariance(self):
        """Unbiased covariance (d, d); needs at least two features."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 features, got {self.count}")
        return self.m2 / (self.count - 1)

    def update(self, features, finite=None):
        """These statistics merged with those of another (n, d) batch of features (a new object).

        Args:
          features: (n, d).
          finite: None (every sample counts), or (n,) booleans: the samples marked False (their sample held NaN or
            Inf) are counted in `num_nonfinite` and left out of the moments.
        """
        features = _check_features(features, finite)  # the samples kept
        left_out = 0 if finite is None else int(np.size(finite) - np.count_nonzero(finite))
        if features.shape[1] != self.dim:
            raise ValueError(f"features of dimension {features.shape[1]} added to statistics of dimension {self.dim}")
        if features.shape[0] == 0:
            return dataclasses.replace(self, num_nonfinite=self.num_nonfinite + left_out)
        batch_mean = features.mean(axis=0)
        centred = features - batch_mean
        return self.merge(FeatureStats(features.shape[0], batch_mean, centred.T @ centred, left_out))

    def merge(self, other):
        """The statistics of the union of two feature sets (Chan, Golub & LeVeque 1979)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimensions {self.dim} and {other.dim}")
        num_nonfinite = self.num_nonfinite + other.num_nonfinite
        if other.count == 0 or self.count == 0:
            kept = self if other.count == 0 else other
            return dataclasses.replace(kept, num_nonfinite=num_nonfinite)
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / count)
        return FeatureStats(count, mean, m2, num_nonfinite)

    def arrays(self):
        """{count, mean, m2, num_nonfinite}: the exact state, for a file (`from_arrays` reads it back)."""
        return {"count": np.asarray(self.count), "mean": self.mean, "m2": self.m2,
                "num_nonfinite": np.asarray(self.num_nonfinite)}

    @classmethod
    def from_arrays(cls, arrays):
        return cls(int(arrays["count"]), np.array(arrays["mean"], np.float64), np.array(arrays["m2"], np.float64),
                   int(arrays["num_nonfinite"]))

    def save(self, path):
        """Write mean, covariance and count to an .npz atomically (the layout of pytorch-fid's precomputed
        statistics: mu and sigma), so that reference statistics are computed once."""
        write_npz(str(path), {"mu": self.mean, "sigma": self.covariance, "count": self.count})

    @classmethod
    def load(cls, path):
        """Read statistics written by `save` (or any .npz with mu, sigma and count)."""
        with np.load(path, allow_pickle=False) as f:
            missing = {"mu", "sigma", "count"} - set(f.files)
            if missing:
                raise ValueError(f"{path}: not a statistics file (missing {sorted(missing)}; has {f.files})")
            count = int(f["count"])
            return cls(count, np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64) * (count - 1))


@dataclasses.dataclass(frozen=True)
class Moments:
    """A mean and a covariance given as they are (a statistics file without a sample count): what
    `frechet_distance` needs of a reference."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int | None = None

    @property
    def dim(self):
        return self.mean.shape[0]


def frechet_distance(stats1: FeatureStats | Moments, stats2: FeatureStats | Moments, offset: float = 1e-6) -> float:
    """The Fréchet distance between the Gaussians of two `FeatureStats` (or `Moments`).

    Args:
      stats1, stats2: statistics of the same feature dimension.
      offset: the diagonal added to both covariances when their product is singular (the standard tools' 1e-6).

    Returns:
      The distance, a Python float.
    """
    if stats1.dim != stats2.dim:
        raise ValueError(f"feature dimensions differ: {stats1.dim} and {stats2.dim}")
    return frechet_distance_from_moments(stats1.mean, stats1.covariance, stats2.mean, stats2.covariance, offset)


def frechet_distance_extrapolated(features: np.ndarray, reference: FeatureStats, sizes: tuple = (1000, 2000, 5000),
                                  seed: int = 0, offset: float = 1e-6) -> tuple[float | None, dict]:
    """The Fréchet distance at infinitely many samples, FD_inf (Chong & Forsyth 2020), with FD at each size.

    FD computed from n samples is biased upwards by about c / n, with c depending on the distribution, so two
    sample sets compared at one finite n can rank in the wrong order when their true distances are close. FD is
    computed on random subsets of n = `sizes` (those below the number of features) and on all features, and the
    line FD(n) = FD_inf + c / n fitted by least squares gives the intercept.

    Args:
      features: (n, d) features of the samples.
      reference: `FeatureStats` of the reference set (treated as exact).
      sizes: subset sizes; the full set is always added. At least two sizes are needed for a fit.
      seed: the subsets are the first n of one random permutation (nested subsets).

    Returns:
      (fd_inf, {n: FD}) with fd_inf None when fewer than two sizes are available.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = FeatureStats(10**9, np.zeros(4), np.eye(4) * (10**9 - 1))  # N(0, I), exactly
    >>> fd_inf, by_n = frechet_distance_extrapolated(rng.standard_normal((20000, 4)), ref, sizes=(500, 2000))
    >>> abs(fd_inf) < 0.01 < by_n[500]
    True
    """
    features = _check_features(features)
    order = np.random.default_rng(seed).permutation(features.shape[0])
    counts = sorted({int(n) for n in sizes if 2 <= n < features.shape[0]} | {features.shape[0]})
    by_n = {n: frechet_distance(FeatureStats.from_features(features[order[:n]]), reference, offset) for n in counts}
    if len(counts) < 2:
        return None, by_n
    design = np.stack([np.ones(len(counts)), 1.0 / np.asarray(counts, np.float64)], axis=1)
    (fd_inf, _), *_ = np.linalg.lstsq(design, np.asarray([by_n[n] for n in counts]), rcond=None)
    return float(fd_inf), by_n


def frechet_distance_from_moments(mu1, sigma1, mu2, sigma2, offset=1e-6):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64 (see the module)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched moments: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, "
                         f"{sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} has non-finite entries")
    diff = mu1 - mu2
    root = _sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(root)):
        shift = offset * np.eye(sigma1.shape[0])
        root = _sqrtm((sigma1 + shift) @ (sigma2 + shift))
    if np.iscomplexobj(root):
        imaginary = np.max(np.abs(np.diagonal(root).imag))
        if imaginary > 1e-3:
            raise ValueError(f"the covariance product's square root has an imaginary diagonal of {imaginary:.3g}")
        root = root.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def _sqrtm(matrix):
    from scipy import linalg

    with np.errstate(all="ignore"):
        return linalg.sqrtm(matrix)


def frechet_score(stats: FeatureStats, reference: FeatureStats | Moments) -> float:
    """The Fréchet distance of the finite samples' statistics to a reference; NaN when fewer than two samples are
    finite (a cell whose sampler failed has no distance, and says how many samples it left out in
    `stats.num_nonfinite`)."""
    return frechet_distance(stats, reference) if stats.count >= 2 else float("nan")


def _check_features(features, finite=None):
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {features.shape}")
    if finite is not None:
        if np.shape(finite) != features.shape[:1]:
            raise ValueError(f"finite must be ({features.shape[0]},) booleans, got shape {np.shape(finite)}")
        features = features[np.asarray(finite, bool)]
    if not np.all(np.isfinite(features)):
        raise ValueError(f"features have {int(np.sum(~np.isfinite(features)))} non-finite entries; count non-finite "
                         "samples separately instead of averaging them in")
    return features

