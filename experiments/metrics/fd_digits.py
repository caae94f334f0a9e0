"""FD-digits: a Fréchet distance for digit images, in the features of a small digits classifier.

The metric. FD-digits is FID (Heusel et al. 2017) with Inception replaced by a small CNN trained to classify
scikit-learn's 8x8 handwritten digits (1797 images) at the resolution scored: 8, 16 or 32 px (the network, the data
and the split: `digits_classifier`; its training: `digits_training`). Gaussians are fitted to the classifier's 128
penultimate features of the samples and of the real digits, and their Fréchet distance is computed by
`experiments.metrics.frechet` (float64 statistics, scipy's sqrtm as pytorch-fid does). Lower is better; 0 means
equal feature means and covariances. The features are the registered feature "fd_digits" (`features.FEATURES`),
so the runners score FD-digits through the same path as FID.

    from fastsamplers.experiments.metrics.fd_digits import fd_digits
    score = fd_digits(samples)  # samples (n, H, W, 1) in [-1, 1], H = W in {8, 16, 32}; or an iterable of batches

Samples are clipped to [-1, 1] before scoring (as image pipelines do when writing samples; `clip=False` turns this
off). Non-finite samples follow the one policy of `frechet.FeatureStats`: counted and left out. `score_samples`
(the runners' scorer) reports their number beside the distance; `fd_digits`, `features` and `feature_stats`, which
return a bare value, refuse them with an error that says how many there are (averaging them in would hide a
sampler's failures).

Measured for version v1 (jax 0.10.2, CPU):

    size   FD train (1438) vs test (359)   FD half (898) vs half (899)
    8 px   7.64                            11.85
    16 px  13.01                           26.09
    32 px  11.50                           19.92

These are the data-vs-data floor (`data_floor`): FD between disjoint sets of real digits, a finite-sample bias that
shrinks as the sets grow; differences between samplers below it are noise. For scale, FD(all digits + Gaussian
noise, all digits) for noise std 0.1, 0.3, 1.0 is about 3, 28, 215 at 8 px; 0.9, 28, 635 at 16 px; 2.3, 60, 919 at
32 px (FD between digits 0-4 and 5-9 at 8 px: 819). Values are not comparable across sizes (each size has its own
classifier and feature scale), and only between runs of one classifier (`VERSION`, size, seed) and one reference
split.

Features are computed in jitted float32 batches of a fixed size (the last one padded: one compilation per size and
batch size) whatever `jax_enable_x64` says; statistics accumulate in float64 over batches (`FeatureStats`), so one
batch or many give the same statistics up to rounding. Features of 10,000 32x32 images take 0.7-0.9 s on two (busy)
CPU cores (8x8: 0.25 s, 16x16: 0.65 s); `fd_digits` on 10,000 32x32 samples takes about 2.3 s in all, most of the
rest being scipy's sqrtm of the 128x128 covariance product (about 1 s per distance).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from fastsamplers import core
from fastsamplers.experiments.metrics import features as features_lib
from fastsamplers.experiments.metrics.digits_classifier import (SEED, SIZES, SPLITS, check_size, digits,
                                                                half_indices, weights_path)
from fastsamplers.experiments.metrics.frechet import (FeatureStats, frechet_distance, frechet_distance_extrapolated,
                                                      frechet_score)


def feature(size, cache_dir=None, clip=True) -> features_lib.Feature:
    """The registered "fd_digits" feature for size-px images (its classifier trained and cached if missing)."""
    built = features_lib.FEATURES.build("fd_digits", cache_dir=cache_dir).build((check_size(size), size, 1))
    return built if clip else dataclasses.replace(built, input="float")


def _check_images(images, size=None):
    """(n, H, W, 1) or (n, H, W) float images -> (images (n, s, s, 1), s)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] != 1 or images.shape[1] != images.shape[2]:
        raise ValueError(f"FD-digits expects square one-channel images (n, H, W, 1) with H = W in 8, 16 or 32, got "
                         f"shape {images.shape}")
    inferred = int(images.shape[1])
    if inferred not in SIZES:
        raise ValueError(f"FD-digits supports image sizes 8, 16 and 32, got {inferred}x{inferred} images")
    if size is not None and check_size(size) != inferred:
        raise ValueError(f"size={size} but the images are {inferred}x{inferred}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype} (uint8 x: x / 127.5 - 1)")
    return images, inferred


def _refuse_non_finite(num_nonfinite, num_samples):
    if num_nonfinite:
        raise ValueError(f"{num_nonfinite} of {num_samples} samples hold NaN or Inf; FD-digits scores finite samples "
                         "only: drop them and report the non-finite fraction separately")


def features(size, images, batch_size=1000, cache_dir=None, clip=True):
    """Penultimate features of the size-px classifier: float64 numpy (n, 128).

    Args:
      size: 8, 16 or 32, or None (from the images).
      images: (n, size, size, 1) (or (n, size, size)) floats in [-1, 1]; must be finite.
      batch_size: images per jitted call (the last batch is padded).
      cache_dir: the classifier cache; None: the default (`digits_classifier`). A missing classifier is trained.
      clip: clip the images to [-1, 1] first.
    """
    images, size = _check_images(images, size)
    _refuse_non_finite(int(np.sum(~features_lib.finite_rows(images))), images.shape[0])
    batch_size = min(core.batches.check_batch_size(batch_size), max(images.shape[0], 1))
    built = feature(size, cache_dir, clip)
    out = [f for f, _ in features_lib.feature_batches(built, images, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, built.dim))


def feature_stats(images, size=None, batch_size=1000, cache_dir=None, clip=True):
    """`FeatureStats` (float64) of the classifier features of `images`: an array (n, H, W, 1), or an iterable of such
    arrays (e.g. a sampler's output batch by batch; all of the same size).

    Raises:
      ValueError: some samples hold NaN or Inf (the message says how many, counted over all batches), or the images
        are not (n, H, W, 1) with H = W in {8, 16, 32}.
    """
    return _stats(images, size, batch_size, cache_dir, clip)[0]


def _stats(images, size, batch_size, cache_dir, clip):
    """(FeatureStats, size) of an array or an iterable of arrays."""
    if isinstance(images, (np.ndarray, jax.Array)):
        images = [images]
    stats = None
    for batch in images:
        batch, size = _check_images(batch, size)
        if stats is None:
            built = feature(size, cache_dir, clip)
            stats = FeatureStats.empty(built.dim)
        stats = features_lib.stream_stats(built, batch, batch_size, stats=stats)
    if stats is None or stats.num_samples == 0:
        raise ValueError("no images given")
    _refuse_non_finite(stats.num_nonfinite, stats.num_samples)
    return stats, size


def _check_reference(reference):
    """A reference is a split of the real digits (`SPLITS`) or a `FeatureStats`: ValueError otherwise."""
    if not isinstance(reference, FeatureStats):
        SPLITS.check(reference, kind="reference", choices=", ".join(SPLITS.valid()) + " or a FeatureStats")


_REFERENCE = {}


def reference_stats(size, split="all", cache_dir=None):
    """`FeatureStats` of the real digits at size px: split "all" (1797), "train" (1438) or "test" (359).

    Memoised in this process per weights file.
    """
    size = check_size(size)
    SPLITS.check(split)
    built = feature(size, cache_dir)
    path = weights_path(size, cache_dir)
    key = (path, os.stat(path).st_mtime_ns, split)
    if key not in _REFERENCE:
        _REFERENCE[key] = features_lib.stream_stats(built, digits(size, split)[0], 1000)
    return _REFERENCE[key]


def fd_digits(images, size: int | None = None, reference: str | FeatureStats = "all", cache_dir: str | None = None,
              batch_size: int = 1000, clip: bool = True) -> float:
    """FD-digits of `images` against the real digits.

    Args:
      images: (n, H, W, 1) floats in [-1, 1] with H = W in {8, 16, 32} and n >= 2, or an iterable of such batches.
      size: None (from the images) or the expected size.
      reference: "all", "train" or "test" (a split of the real digits), or a `FeatureStats` of this classifier's
        features (e.g. from `reference_stats`, saved with `FeatureStats.save`).
      cache_dir: the classifier cache; None: the default. A missing classifier is trained and cached.
      batch_size: images per jitted feature call.
      clip: clip the images to [-1, 1] first.

    Returns:
      The Fréchet distance (float).

    Raises:
      ValueError: samples holding NaN or Inf (the message says how many), images not of size 8, 16 or 32.
    """
    _check_reference(reference)
    stats, size = _stats(images, size, batch_size, cache_dir, clip)
    if stats.count < 2:
        raise ValueError(f"FD-digits needs at least 2 samples, got {stats.count}")
    ref = reference if isinstance(reference, FeatureStats) else reference_stats(size, reference, cache_dir)
    return frechet_distance(stats, ref)


def score_samples(samples: np.ndarray, reference: str | FeatureStats = "all", size: int | None = None,
                  extrapolate: bool = False, cache_dir: str | None = None) -> dict:
    """FD-digits of a sampler's output: the samples holding NaN or Inf are counted and left out, never scored.

    The scorer of the runs that report FD-digits beside other numbers (the bottleneck benchmark, causal inversions):
    features of the finite samples (`features`), their Fréchet distance to the reference statistics, and optionally
    the extrapolation of that distance to infinitely many samples (`frechet.frechet_distance_extrapolated`, FD_inf),
    which is the fairer comparison when FD's finite-sample bias differs between sample sets.

    Args:
      samples: (n, H, W, 1) floats in [-1, 1], H = W in {8, 16, 32}; non-finite samples allowed.
      reference: "all", "train" or "test" (a split of the real digits), or a `FeatureStats` of this classifier.
      size: None (from the samples) or the expected size.
      extrapolate: also compute FD_inf and FD on nested subsets.
      cache_dir: the classifier cache; None: the default.

    Returns:
      {"fd_digits": FD of the finite samples, or None when fewer than two are finite; with `extrapolate` also
      "fd_digits_inf" (None below the smallest subset size) and "fd_digits_by_n" ({str(n): FD on n samples});
      "num_nonfinite": how many samples were left out}.
    """
    _check_reference(reference)
    samples = np.asarray(samples)
    finite = features_lib.finite_rows(samples)
    out = {"fd_digits": None}
    if extrapolate:
        out.update(fd_digits_inf=None, fd_digits_by_n=None)
    out["num_nonfinite"] = int((~finite).sum())
    if finite.sum() < 2:
        return out
    size = samples.shape[1] if size is None else size
    kept = features(size, samples[finite], cache_dir=cache_dir)
    every = np.zeros((samples.shape[0], kept.shape[1]))
    every[finite] = kept
    stats = FeatureStats.from_features(every, finite)  # the policy: the left-out samples counted, not scored
    if not isinstance(reference, FeatureStats):
        reference = reference_stats(size, split=reference, cache_dir=cache_dir)
    out["fd_digits"] = frechet_score(stats, reference)
    if extrapolate:
        out["fd_digits_inf"], by_n = frechet_distance_extrapolated(kept, reference)
        out["fd_digits_by_n"] = {str(n): value for n, value in by_n.items()}
    return out


def data_floor(size, cache_dir=None, seed=SEED):
    """FD between disjoint sets of real digits at size px, the finite-sample floor of FD-digits at these set sizes:
    {"train_vs_test": FD(train split, test split), "half_vs_half": FD of the two halves of `half_indices(seed)`}."""
    size = check_size(size)
    images, _ = digits(size, "all")
    first, second = (feature_stats(images[h], size, cache_dir=cache_dir) for h in half_indices(seed))
    return {
        "train_vs_test": frechet_distance(reference_stats(size, "train", cache_dir),
                                          reference_stats(size, "test", cache_dir)),
        "half_vs_half": frechet_distance(first, second),
    }


__all__ = ["feature", "features", "feature_stats", "reference_stats", "fd_digits", "score_samples", "data_floor"]
