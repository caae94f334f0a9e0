"""Image features for Fréchet distances, chosen by name, and the one path from samples to feature statistics.

Features (`FEATURES`, built from a config by `from_config`; each names the metric its distance is):

  "inception"          FID (Heusel et al. 2017): the FID Inception-v3's 2048-d pool3 (`experiments.metrics.inception`),
                       weights from the .npz `fid_weights` (scripts/convert_inception_weights.py; nothing is
                       downloaded). Metric "fid".
  "random_projection"  a fixed Gaussian projection (seed 0, `feature_dim` columns, scaled by 1/sqrt(pixels)) of the
                       same inputs: a test feature whose distance is not FID. Metric "fd_random_projection".
  "fd_digits"          the FD-digits classifier's 128 penultimate features (`digits_classifier`; trained and cached
                       on first use), for 8, 16 or 32 px one-channel images. Metric "fd_digits".

Inputs. Samples are floats in [-1, 1] (NHWC); image files are uint8. The FID features see samples as they would be
saved as PNGs, `quantise`d: uint8 = round(clip((x + 1) * 127.5, 0, 255)) (EDM's `(x * 127.5 + 128).clip(0, 255)` is
the same but at exact ties; score_sde's `(255 * clip((x + 1) / 2, 0, 1)).astype(uint8)` truncates, half a level
darker), then uint8 / 127.5 - 1. FD-digits, defined on float samples, sees them clipped to [-1, 1]. So a sample
set scores the same whichever runner hands it over (`sampler_tables`, `fid_protocol`), and uint8 images (a
reference folder) score as the samples they are.

Non-finite samples: `feature_batches` marks every sample holding NaN or Inf (their pixels are zeroed before the
network, so nothing non-finite reaches it), and `stream_stats` hands the marks to `FeatureStats.update`, which
counts those samples and leaves them out (the NaN policy, in `frechet`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, ClassVar, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fastsamplers import core
from fastsamplers.experiments.metrics.frechet import FeatureStats

FEATURES = core.Registry("feature")
INPUTS = ("uint8", "clip", "float")  # what a feature network sees of float samples: quantised, clipped, as they are


def quantise(x):
    """Model output in [-1, 1] -> uint8 images: round(clip((x + 1) * 127.5, 0, 255)) (ties to even); NaN -> 0.

    >>> import numpy as np
    >>> np.asarray(quantise(np.array([-1.0, -0.999, 0.0, 0.999, 1.0, 7.0, np.nan]))).tolist()
    [0, 0, 128, 255, 255, 255, 0]
    """
    x = jnp.asarray(x)
    x = jnp.where(jnp.isnan(x), -1.0, x)
    return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


def dequantise(images):
    """uint8 images -> float32 in [-1, 1]: images / 127.5 - 1 (`quantise` maps these back to the same images)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def finite_rows(x):
    """(n,) booleans: which samples of x (n, ...) hold no NaN or Inf (numpy in, numpy out; JAX in, JAX out)."""
    xp = x.__array_namespace__() if hasattr(x, "__array_namespace__") else np
    return xp.all(xp.isfinite(x.reshape(x.shape[0], -1)), axis=1)


@dataclasses.dataclass(frozen=True)
class Feature:
    """A built feature network: `apply(params, x)` maps float32 images (n, H, W, C) in [-1, 1] to (n, dim) features,
    with `params` an argument of its compiled program. `apply` is hashable (one compiled program per apply and batch
    shape); `input` is how it sees float samples (`INPUTS`); `record` is what results and fingerprints say about it."""

    name: str
    metric: str
    dim: int
    params: Any
    apply: Callable
    input: str
    record: dict
    image_shape: tuple | None = None  # the one image shape it takes (random_projection), None for any

    def identity(self):
        """The record without file paths: what decides the features (moving the weights changes nothing)."""
        return {k: v for k, v in self.record.items() if k != "weights"}


def from_config(config, name: str | None = None):
    """The feature `name` (default `config.feature`) with its options read from the config keys of the same names
    (`fid_weights`, `feature_dim`, ...), checked; `.build(image_shape)` then makes the `Feature`."""
    name = config.feature if name is None else name
    options = {k: config[k] for k in FEATURES.options(name) if k in config}
    return FEATURES.build(name, **options)


def metrics() -> dict:
    """{metric name: feature name} of the registered features."""
    return {factory.metric: name for name, factory in FEATURES.items()}


def check_image_shape(name: str, image_shape) -> None:
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
        raise ValueError(f"feature {name!r} scores images (H, W, 1 or 3); the samples have shape {image_shape}")


@FEATURES.register("inception")
@dataclasses.dataclass(frozen=True)
class InceptionFeature:
    """FID: pool3 of the FID Inception-v3; `fid_weights` is the .npz of scripts/convert_inception_weights.py."""

    fid_weights: str = ""
    metric: ClassVar[str] = "fid"

    def __post_init__(self):
        if not self.fid_weights:
            raise ValueError("feature 'inception' needs fid_weights: the .npz that "
                             "scripts/convert_inception_weights.py makes from pytorch-fid's "
                             "pt_inception-2015-12-05-6726825d.pth")
        if not os.path.isfile(self.fid_weights):
            raise FileNotFoundError(f"fid_weights {self.fid_weights!r} not found (convert pytorch-fid's weights "
                                    "with scripts/convert_inception_weights.py; nothing is downloaded)")

    def build(self, image_shape) -> Feature:
        from fastsamplers.experiments.metrics import inception

        check_image_shape("inception", image_shape)
        path = os.path.abspath(self.fid_weights)
        return Feature("inception", self.metric, inception.FEATURE_DIM, inception.load_params(path),
                       _inception_apply, "uint8",
                       {"kind": "inception", "layer": "pool3", "dim": inception.FEATURE_DIM, "weights": path,
                        "weights_sha256": core.sha256_file(path)})


def _inception_apply(params, x):
    from fastsamplers.experiments.metrics import inception

    return inception.InceptionV3().apply(params, x)


PROJECTION_SEED = 0  # the random_projection feature's matrix


@FEATURES.register("random_projection")
@dataclasses.dataclass(frozen=True)
class RandomProjectionFeature:
    """A fixed Gaussian projection of the quantised images to `feature_dim` features: a test feature, not FID."""

    feature_dim: int = 8
    metric: ClassVar[str] = "fd_random_projection"

    def __post_init__(self):
        if isinstance(self.feature_dim, bool) or not isinstance(self.feature_dim, int) or self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")

    def build(self, image_shape) -> Feature:
        check_image_shape("random_projection", image_shape)
        size = int(np.prod(image_shape))
        rng = np.random.default_rng(PROJECTION_SEED)
        matrix = (rng.standard_normal((size, self.feature_dim)) / math.sqrt(size)).astype(np.float32)
        return Feature("random_projection", self.metric, self.feature_dim, matrix, _projection_apply, "uint8",
                       {"kind": "random_projection", "dim": self.feature_dim, "seed": PROJECTION_SEED,
                        "image_shape": list(image_shape),
                        "note": "a test feature: a fixed Gaussian projection of uint8 / 127.5 - 1; its Frechet "
                                "distance is not FID"}, tuple(image_shape))


def _projection_apply(matrix, x):
    return jnp.dot(x.reshape(x.shape[0], -1), matrix, precision=jax.lax.Precision.HIGHEST)


@FEATURES.register("fd_digits")
@dataclasses.dataclass(frozen=True)
class DigitsFeature:
    """FD-digits: the digits classifier's penultimate features; `cache_dir` holds its weights (None: the default)."""

    cache_dir: str | None = None
    metric: ClassVar[str] = "fd_digits"

    def build(self, image_shape) -> Feature:
        from fastsamplers.experiments.metrics import digits_classifier, digits_training

        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[2] != 1 or image_shape[0] != image_shape[1]:
            raise ValueError(f"FD-digits expects square one-channel images (n, H, W, 1) with H = W in 8, 16 or 32, "
                             f"got shape {('n', *image_shape)}")
        size = digits_classifier.check_size(image_shape[0])
        classifier = digits_training.classifier(size, self.cache_dir)
        return Feature("fd_digits", self.metric, classifier.model.feature_dim, classifier.params,
                       _DigitsApply(classifier.model), "clip",
                       {"kind": "fd_digits", "size": size, "dim": classifier.model.feature_dim,
                        "version": digits_classifier.VERSION, "weights": classifier.path,
                        "seed": classifier.info.get("seed")}, image_shape)


@dataclasses.dataclass(frozen=True)
class _DigitsApply:
    model: Any  # a DigitsClassifier (hashable: a module's fields)

    def __call__(self, params, x):
        return self.model.apply({"params": params}, x, return_features=True)


# ---------------------------------------------------------------------------------------------------------------
# Samples -> features -> statistics.


def sharding(mesh, batched: bool):
    """The placement of a batch (split over the mesh's `data` axis) or of a replicated value."""
    return NamedSharding(mesh, PartitionSpec("data") if batched else PartitionSpec())


@functools.lru_cache(maxsize=16)
def _program(apply, input, mesh):
    """jit(params, images (n, H, W, C) float or uint8) -> (features (n, dim) float32, finite (n,) bool)."""

    def run(params, images):
        if images.dtype == jnp.uint8:
            return apply(params, dequantise(images)), jnp.ones(images.shape[0], bool)
        finite = finite_rows(images)
        x = jnp.where(jnp.isfinite(images), images, 0.0).astype(jnp.float32)  # a left-out sample stays finite
        x = dequantise(quantise(x)) if input == "uint8" else jnp.clip(x, -1.0, 1.0) if input == "clip" else x
        return apply(params, x), finite

    if mesh is None:
        return jax.jit(run)
    return jax.jit(run, in_shardings=(sharding(mesh, False), sharding(mesh, True)),
                   out_shardings=(sharding(mesh, True), sharding(mesh, True)))


def feature_batches(feature: Feature, batches: Iterable, batch_size: int, mesh=None) -> Iterator[tuple]:
    """(features (n, dim) float64 numpy, finite (n,) bool numpy) of each batch of samples, in order.

    Args:
      feature: a built `Feature`.
      batches: one array of samples (floats in [-1, 1]) or uint8 images, cut into batches here; or an iterable of
        such arrays (numpy or on the devices) of at most `batch_size` rows each, or of (array, n) pairs of which
        only the first n rows count (a batch padded by its maker).
      batch_size: the compiled batch size (shorter batches are padded; with a mesh, a multiple of its devices).
      mesh: a device mesh to shard each batch over along its `data` axis (None: the default device).

    The next batch is dispatched before the current one's features are read back, so the host and the devices
    overlap.
    """
    core.batches.check_batch_size(batch_size)
    program = _program(feature.apply, feature.input, mesh)
    if hasattr(batches, "shape"):
        batches = [batches[start:start + batch_size] for start in range(0, batches.shape[0], batch_size)]
    pending = None
    for item in batches:
        images, n = item if isinstance(item, tuple) else (item, item.shape[0])
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            images = images.astype(np.float32)
        elif images.dtype == jnp.float64:
            images = images.astype(jnp.float32)
        images = core.pad_rows(images, batch_size)
        if mesh is not None:  # device_put first: jit refuses host arrays for a sharded argument under jax.distributed
            images = jax.device_put(images, sharding(mesh, True))
        current = (n, program(feature.params, images))
        if pending is not None:
            yield _read_back(*pending)
        pending = current
    if pending is not None:
        yield _read_back(*pending)


def _read_back(n, outputs):
    features, finite = outputs
    return np.asarray(features, np.float64)[:n], np.asarray(finite)[:n]


def stream_stats(feature: Feature, batches: Iterable, batch_size: int, mesh=None,
                 stats: FeatureStats | None = None) -> FeatureStats:
    """`FeatureStats` of the features of `batches` (see `feature_batches`), added to `stats` if given: samples
    holding NaN or Inf are counted in `num_nonfinite` and left out.

    Example:
        >>> f = FEATURES.build("random_projection", feature_dim=2).build((2, 2, 1))
        >>> x = np.zeros((3, 2, 2, 1)); x[1, 0, 0, 0] = np.nan
        >>> s = stream_stats(f, [x], batch_size=4)
        >>> s.count, s.num_nonfinite
        (2, 1)
    """
    stats = FeatureStats.empty(feature.dim) if stats is None else stats
    for features, finite in feature_batches(feature, batches, batch_size, mesh):
        stats = stats.update(features, finite)
    return stats

