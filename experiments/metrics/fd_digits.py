"""FD-digits: a Fréchet distance for digit images, in the features of a small digits classifier.

The metric. FD-digits is FID (Heusel et al. 2017) with Inception replaced by a small CNN trained to classify
scikit-learn's 8x8 handwritten digits (1797 images, `experiments.train.data.load_digits`) at the resolution scored: 8,
16 or 32 px (16 and 32 px are the 8 px digits resized bilinearly, as the generative models see them). Gaussians are
fitted to the classifier's 128 penultimate features of the samples and of the real digits, and their Fréchet
distance is computed by `experiments.metrics.frechet` (float64 statistics, scipy's sqrtm as pytorch-fid does). Lower is
better; 0 means equal feature means and covariances.

    from fastsamplers.experiments.metrics.fd_digits import fd_digits
    score = fd_digits(samples)  # samples (n, H, W, 1) in [-1, 1], H = W in {8, 16, 32}; or an iterable of batches

Samples are clipped to [-1, 1] before scoring (as image pipelines do when writing samples; `clip=False` turns this
off). Samples holding NaN or Inf are rejected with an error that says how many there are: drop them, score the rest
and report the non-finite fraction next to the FD (averaging them in would hide a sampler's failures).

The classifier (`DigitsClassifier`, Flax Linen, NHWC input in [-1, 1]): at 8 and 16 px a 3x3 convolution at full
resolution (32 resp. 16 channels), then 4x4 convolutions of stride 2 down to 4x4 (8 px: 32 channels; 16 px: 32, 32;
32 px: 16, 32, 32), a 3x3 convolution with 64 channels at 4x4, flatten (1024), Dense(128) -- its pre-activations
are the features -- then ReLU and a Dense(10) head; ReLU after every convolution. The features are taken before the
ReLU so that none is identically zero on the digits (a third of the ReLU units are), which keeps the covariances of
full rank and scipy's sqrtm well conditioned. Trained with AdamW (learning rate 3e-3, cosine decay, weight decay
1e-4, batch 64, 30 epochs) on random shifts of up to max(1, size/8) pixels (background-filled), from `SEED`.

The split: a stratified 80/20 split of the 1797 digits, 20% of each class drawn with numpy's legacy (stream-stable)
`RandomState(SEED)`: 1438 training and 359 held-out images (`split_indices`).

Measured for version v1 (jax 0.10.2, CPU, two cores shared with other jobs):

    size   held-out accuracy   training   FD train (1438) vs test (359)   FD half (898) vs half (899)
    8 px   98.6% (5 errors)    ~16 s      7.64                            11.85
    16 px  98.9% (4 errors)    ~15 s      13.01                           26.09
    32 px  99.4% (2 errors)    ~14 s      11.50                           19.92

(training times include compilation and were taken with the cores busy with other jobs; the weights came out
bit-identical in repeated runs and with `jax_enable_x64` on or off.)

The last two columns are the data-vs-data floor (`data_floor`): FD between disjoint sets of real digits, a
finite-sample bias that shrinks as the sets grow; differences between samplers below it are noise. For scale,
FD(all digits + Gaussian noise, all digits) for noise std 0.1, 0.3, 1.0 is about 3, 28, 215 at 8 px; 0.9, 28, 635
at 16 px; 2.3, 60, 919 at 32 px (FD between digits 0-4 and 5-9 at 8 px: 819). Values are not comparable across
sizes (each size has its own classifier and feature scale).

Comparability: FD-digits values are comparable only between runs that use the same classifier (the same `VERSION`,
size and seed) and the same reference split. The version is part of the cached weights' file name
(`classifier_{size}px_{VERSION}.msgpack`, with a `.json` of accuracy, seed and version beside it); changing the
architecture, the training recipe or the split must bump `VERSION`. Weights are trained on first use (deterministic
from the seed) and cached in `$FASTSAMPLERS_CACHE/fd_digits`, else `~/.cache/fastsamplers/fd_digits`;
`scripts/train_fd_digits.py --size 8,16,32` trains them ahead of time and prints the accuracies and floors.

Features are computed in jitted float32 batches of a fixed size (the last one padded: one compilation per size and
batch size) whatever `jax_enable_x64` says; statistics accumulate in float64 over batches (`FeatureStats`), so one
batch or many give the same statistics up to rounding. Features of 10,000 32x32 images take 0.7-0.9 s on two (busy)
CPU cores (8x8: 0.25 s, 16x16: 0.65 s); `fd_digits` on 10,000 32x32 samples takes about 2.3 s in all, most of the
rest being scipy's sqrtm of the 128x128 covariance product (about 1 s per distance).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from fastsamplers import core
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_extrapolated

VERSION = "v1"
SIZES = (8, 16, 32)
SEED = 0
FEATURE_DIM = 128
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLITS = ("all", "train", "test")

# Training recipe of VERSION (changing any of these, the architecture or the split needs a new VERSION).
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4

_STEM_WIDTH = {8: 32, 16: 16, 32: None}  # a full-resolution 3x3 convolution first (not at 32 px: time)
_STAGE_WIDTHS = {8: (32,), 16: (32, 32), 32: (16, 32, 32)}


# ------------------------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------------------------


class DigitsClassifier(nn.Module):
    """A small CNN for size x size digits (NHWC, one channel, in [-1, 1]); see the module docstring.

    `__call__(x)` gives the 10 logits; `__call__(x, return_features=True)` gives the (n, 128) penultimate features.
    """

    size: int
    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, x, return_features=False):
        if _STEM_WIDTH[self.size]:
            x = nn.relu(nn.Conv(_STEM_WIDTH[self.size], (3, 3), padding="SAME")(x))
        for width in _STAGE_WIDTHS[self.size]:
            x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME")(x))
        x = nn.relu(nn.Conv(64, (3, 3), padding="SAME")(x))
        x = x.reshape((x.shape[0], -1))
        features = nn.Dense(self.feature_dim)(x)  # the features: pre-activations (full rank, unlike the ReLUs)
        if return_features:
            return features
        return nn.Dense(NUM_CLASSES)(nn.relu(features))


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained FD-digits classifier: its module, parameters, training record (accuracy, seed, version, ...) and the
    weights file it was read from (None if not saved)."""

    size: int
    model: DigitsClassifier
    params: dict
    info: dict
    path: str | None = None

    @property
    def accuracy(self):
        """Held-out accuracy (fraction)."""
        return float(self.info["test_accuracy"])


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in SIZES:
        raise ValueError(f"FD-digits supports image sizes 8, 16 and 32 (square, one channel), got {size!r}")
    return int(size)


def _param_template(size):
    """The shapes and dtypes of the classifier's parameters (no computation)."""
    model = DigitsClassifier(size)
    dummy = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), dummy)["params"]


# ------------------------------------------------------------------------------------------------------------------
# Data and split
# ------------------------------------------------------------------------------------------------------------------


@functools.cache
def _digits_numpy(size):
    """All 1797 digits at `size` px (float32 numpy (1797, size, size, 1) in [-1, 1]) and their labels (int32)."""
    from sklearn.datasets import load_digits as sklearn_digits

    from fastsamplers.experiments.train.data import load_digits  # the digits as the generative models see them

    with jax.enable_x64(False):
        images = np.asarray(load_digits(image_size=size).data, np.float32)
    labels = sklearn_digits().target.astype(np.int32)
    if images.shape[0] != labels.shape[0]:
        raise RuntimeError(f"digits: {images.shape[0]} images but {labels.shape[0]} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digits(size, split="all"):
    """The real digits of a split ("all", "train" or "test"): float32 numpy (n, size, size, 1) in [-1, 1], labels."""
    size = _check_size(size)
    images, labels = _digits_numpy(size)
    if split == "all":
        return images, labels
    train, test = split_indices()
    if split == "train":
        return images[train], labels[train]
    if split == "test":
        return images[test], labels[test]
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


@functools.cache
def split_indices(seed=SEED):
    """The stratified 80/20 split: sorted int64 index arrays (train, test) into the 1797 digits.

    Within each class (in label order) `round(0.2 * count)` indices are drawn for the test split by numpy's legacy
    `RandomState(seed)`, whose stream numpy keeps stable across versions.
    """
    _, labels = _digits_numpy(8)
    rng = np.random.RandomState(seed)
    test = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        take = int(round(TEST_FRACTION * members.size))
        test.append(members[rng.permutation(members.size)[:take]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(labels.size), test)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------


def _shift(key, images, max_shift):
    """Random integer translations of up to max_shift pixels per axis, filling with the background (-1)."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1, dtype=jnp.int32)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], jnp.int32(0)), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def train_classifier(size, seed=SEED, epochs=EPOCHS, verbose=False):
    """Trains the size-px classifier on the training split from `seed` and scores it on the held-out split.

    Deterministic given (size, seed, epochs) on one platform; runs in float32 whatever `jax_enable_x64` says.

    Returns:
      A `Classifier` (path None) whose info holds test_accuracy, train_accuracy, seed, version, epochs, timings.
    """
    size = _check_size(size)
    start = time.perf_counter()
    with jax.enable_x64(False):
        params, info = _train(size, seed, epochs, verbose)
    info["train_seconds"] = round(time.perf_counter() - start, 2)
    if verbose:
        print(f"fd_digits {size}px: held-out accuracy {info['test_accuracy']:.4f} "
              f"({info['test_errors']} errors of {info['num_test']}), train accuracy {info['train_accuracy']:.4f}, "
              f"{info['train_seconds']:.1f} s")
    return Classifier(size, DigitsClassifier(size), params, info)


def _train(size, seed, epochs, verbose):
    model = DigitsClassifier(size)
    train_x, train_y = digits(size, "train")
    test_x, test_y = digits(size, "test")
    n = train_x.shape[0]
    steps_per_epoch = n // BATCH_SIZE  # each epoch drops the last partial batch (a different one each epoch)
    total = steps_per_epoch * epochs
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, max(total, 1))
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    key = jax.random.PRNGKey(seed)
    init_key, data_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1, size, size, 1), jnp.float32))["params"]
    opt_state = optimizer.init(params)
    max_shift = max(1, size // 8)
    x_all, y_all = jnp.asarray(train_x), jnp.asarray(train_y)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, state, x_all, y_all, idx, k):
        # A Python loop over jitted steps: on CPU, convolutions inside lax.scan run many times slower.
        x = _shift(k, x_all[idx], max_shift)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y_all[idx])
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    for epoch in range(epochs):
        perm_key, shift_key = jax.random.split(jax.random.fold_in(data_key, epoch))
        order = np.asarray(jax.random.permutation(perm_key, n))
        shift_keys = jax.random.split(shift_key, steps_per_epoch)
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE].astype(np.int32)
            params, opt_state, loss = step(params, opt_state, x_all, y_all, idx, shift_keys[i])
            losses.append(loss)
        if verbose and (epoch + 1) % 10 == 0:
            print(f"  {size}px epoch {epoch + 1}/{epochs}: loss {float(np.mean(jax.device_get(losses))):.4f}")

    test_pred = _predict(model, params, test_x)
    train_pred = _predict(model, params, train_x)
    errors = int(np.sum(test_pred != test_y))
    info = {
        "version": VERSION,
        "size": size,
        "seed": int(seed),
        "epochs": int(epochs),
        "feature_dim": FEATURE_DIM,
        "num_train": int(train_x.shape[0]),
        "num_test": int(test_x.shape[0]),
        "test_accuracy": float(np.mean(test_pred == test_y)),
        "test_errors": errors,
        "train_accuracy": float(np.mean(train_pred == train_y)),
        "jax_version": jax.__version__,
        "platform": jax.default_backend(),
    }
    return jax.device_get(params), info


def _predict(model, params, images):
    logits = _apply(model, params, jnp.asarray(images, jnp.float32), False)
    return np.asarray(jnp.argmax(logits, axis=-1))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _apply(model, params, images, return_features):
    return model.apply({"params": params}, images.astype(jnp.float32), return_features=return_features)


# ------------------------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------------------------


def default_cache_dir():
    """`$FASTSAMPLERS_CACHE/fd_digits`, else `~/.cache/fastsamplers/fd_digits`."""
    root = os.environ.get("FASTSAMPLERS_CACHE")
    if root:
        return os.path.join(os.path.expanduser(root), "fd_digits")
    return os.path.join(os.path.expanduser("~"), ".cache", "fastsamplers", "fd_digits")


def weights_path(size, cache_dir=None):
    """The weights file of the size-px classifier of `VERSION` in the cache (its `.json` record lies beside it)."""
    size = _check_size(size)
    directory = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir is not None else default_cache_dir()
    return os.path.join(directory, f"classifier_{size}px_{VERSION}.msgpack")


def _info_path(path):
    return os.path.splitext(path)[0] + ".json"


def save_classifier(classifier, cache_dir=None):
    """Writes the weights (flax msgpack) and the JSON record to the cache, atomically; returns the weights' path."""
    path = weights_path(classifier.size, cache_dir)
    core.write_atomic(_info_path(path), json.dumps(classifier.info, indent=2, sort_keys=True) + "\n")
    core.write_atomic(path, serialization.to_bytes(classifier.params))
    return path


def load_classifier(size, cache_dir=None, train_if_missing=True, verbose=False):
    """The size-px classifier of `VERSION`, read from the cache, or trained from `SEED` and cached when missing.

    Args:
      size: 8, 16 or 32.
      cache_dir: the cache directory; None: `default_cache_dir()`.
      train_if_missing: train and save when the weights file is absent (else FileNotFoundError).
      verbose: print training progress.

    Returns:
      A `Classifier`.

    Raises:
      ValueError: the weights file does not hold this classifier's parameters (wrong size, version or a damaged
        file); the message names the file to delete.
    """
    size = _check_size(size)
    path = weights_path(size, cache_dir)
    if not os.path.exists(path):
        if not train_if_missing:
            raise FileNotFoundError(f"no FD-digits {size}px classifier ({VERSION}) at {path}; run "
                                    f"scripts/train_fd_digits.py --size {size} or pass train_if_missing=True")
        classifier = train_classifier(size, verbose=verbose)
        path = save_classifier(classifier, cache_dir)
        return dataclasses.replace(classifier, path=path)
    template = _param_template(size)
    fix = f"delete it to retrain, or run scripts/train_fd_digits.py --size {size} --retrain"
    with open(path, "rb") as f:
        data = f.read()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several types for damaged data
        raise ValueError(f"{path} is not a readable FD-digits weights file ({error}); {fix}") from error
    expected = _shapes(serialization.to_state_dict(template))
    found = _shapes(state) if isinstance(state, dict) else repr(type(state))
    if found != expected:
        raise ValueError(f"{path} does not hold the {size}px FD-digits classifier {VERSION}: parameter shapes "
                         f"{_describe(found)} where {_describe(expected)} are expected; {fix}")
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), state)
    info_file = _info_path(path)
    info = {}
    if os.path.exists(info_file):
        with open(info_file) as f:
            info = json.load(f)
    return Classifier(size, DigitsClassifier(size), params, info, path)


def _shapes(state, prefix=""):
    """{"a/b/kernel": shape} of a nested state dict."""
    out = {}
    for name, value in state.items():
        key = f"{prefix}/{name}" if prefix else str(name)
        if isinstance(value, dict):
            out.update(_shapes(value, key))
        else:
            out[key] = tuple(np.shape(value))
    return out


def _describe(shapes):
    if not isinstance(shapes, dict):
        return shapes
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(shapes.items())) + "}"


_LOADED = {}


def _classifier(size, cache_dir):
    """`load_classifier` memoised per weights file (and its modification time) in this process."""
    path = weights_path(size, cache_dir)
    stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    cached = _LOADED.get(path)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return cached[1]
    classifier = load_classifier(size, cache_dir)
    _LOADED[path] = (os.stat(classifier.path).st_mtime_ns, classifier)
    return classifier


# ------------------------------------------------------------------------------------------------------------------
# Features, statistics and the metric
# ------------------------------------------------------------------------------------------------------------------


def _check_images(images, size=None, clip=True):
    """(n, H, W, 1) or (n, H, W) float images -> (float32 numpy (n, s, s, 1), s, number of non-finite samples)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] != 1 or images.shape[1] != images.shape[2]:
        raise ValueError(f"FD-digits expects square one-channel images (n, H, W, 1) with H = W in 8, 16 or 32, got "
                         f"shape {images.shape}")
    inferred = int(images.shape[1])
    if inferred not in SIZES:
        raise ValueError(f"FD-digits supports image sizes 8, 16 and 32, got {inferred}x{inferred} images")
    if size is not None and _check_size(size) != inferred:
        raise ValueError(f"size={size} but the images are {inferred}x{inferred}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype} (uint8 x: x / 127.5 - 1)")
    images = images.astype(np.float32)
    bad = int(np.sum(~np.all(np.isfinite(images), axis=(1, 2, 3))))
    if clip:
        images = np.clip(images, -1.0, 1.0)
    return images, inferred, bad


def _raise_non_finite(bad, total):
    if bad:
        raise ValueError(f"{bad} of {total} samples hold NaN or Inf; FD-digits scores finite samples only: drop them "
                         "and report the non-finite fraction separately")


def features(size, images, batch_size=1000, cache_dir=None, clip=True):
    """Penultimate features of the size-px classifier: float64 numpy (n, 128).

    Args:
      size: 8, 16 or 32, or None (from the images).
      images: (n, size, size, 1) (or (n, size, size)) floats in [-1, 1]; must be finite.
      batch_size: images per jitted call (the last batch is padded).
      cache_dir: the classifier cache; None: `default_cache_dir()`. A missing classifier is trained and cached.
      clip: clip the images to [-1, 1] first.
    """
    images, size, bad = _check_images(images, size, clip)
    _raise_non_finite(bad, images.shape[0])
    return _features(_classifier(size, cache_dir), images, batch_size)


def _features(classifier, images, batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = images.shape[0]
    batch_size = int(min(batch_size, max(n, 1)))
    out = np.empty((n, classifier.model.feature_dim), np.float64)
    with jax.enable_x64(False):
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            m = chunk.shape[0]
            if m < batch_size:  # pad to the compiled shape
                chunk = np.concatenate([chunk, np.zeros((batch_size - m,) + chunk.shape[1:], np.float32)], axis=0)
            out[start:start + m] = np.asarray(_apply(classifier.model, classifier.params, chunk, True))[:m]
    return out


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
    stats, total, bad = None, 0, 0
    for batch in images:
        batch, size, batch_bad = _check_images(batch, size, clip)
        total += batch.shape[0]
        bad += batch_bad
        if bad or batch.shape[0] == 0:  # after a non-finite sample, only count (for the error message)
            continue
        batch_features = _features(_classifier(size, cache_dir), batch, batch_size)
        stats = FeatureStats.from_features(batch_features) if stats is None else stats.update(batch_features)
    _raise_non_finite(bad, total)
    if stats is None:
        raise ValueError("no images given")
    return stats, size


_REFERENCE = {}


def reference_stats(size, split="all", cache_dir=None):
    """`FeatureStats` of the real digits at size px: split "all" (1797), "train" (1438) or "test" (359).

    Memoised in this process per weights file.
    """
    size = _check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    classifier = _classifier(size, cache_dir)
    key = (classifier.path, os.stat(classifier.path).st_mtime_ns, split)
    if key not in _REFERENCE:
        images, _ = digits(size, split)
        _REFERENCE[key] = FeatureStats.from_features(_features(classifier, images, 1000))
    return _REFERENCE[key]


def fd_digits(images, size: int | None = None, reference: str | FeatureStats = "all", cache_dir: str | None = None,
              batch_size: int = 1000, clip: bool = True) -> float:
    """FD-digits of `images` against the real digits.

    Args:
      images: (n, H, W, 1) floats in [-1, 1] with H = W in {8, 16, 32} and n >= 2, or an iterable of such batches.
      size: None (from the images) or the expected size.
      reference: "all", "train" or "test" (a split of the real digits), or a `FeatureStats` of this classifier's
        features (e.g. from `reference_stats`, saved with `FeatureStats.save`).
      cache_dir: the classifier cache; None: `default_cache_dir()`. A missing classifier is trained and cached.
      batch_size: images per jitted feature call.
      clip: clip the images to [-1, 1] first.

    Returns:
      The Fréchet distance (float).

    Raises:
      ValueError: samples holding NaN or Inf (the message says how many), images not of size 8, 16 or 32.
    """
    if not isinstance(reference, FeatureStats) and reference not in SPLITS:
        raise ValueError(f"reference must be one of {', '.join(SPLITS)} or a FeatureStats, got {reference!r}")
    stats, size = _stats(images, size, batch_size, cache_dir, clip)
    if stats.count < 2:
        raise ValueError(f"FD-digits needs at least 2 samples, got {stats.count}")
    ref = reference if isinstance(reference, FeatureStats) else reference_stats(size, reference, cache_dir)
    return frechet_distance(stats, ref)


def score_samples(samples: np.ndarray, reference: str | FeatureStats = "all", size: int | None = None,
                  extrapolate: bool = False, cache_dir: str | None = None) -> dict:
    """FD-digits of a sampler's output: the samples holding NaN or Inf are counted and left out, never scored.

    The one scorer of the runs (sampler tables, the bottleneck benchmark, causal inversions): features of the finite
    samples (`features`), their Fréchet distance to the reference statistics, and optionally the extrapolation of
    that distance to infinitely many samples (`frechet.frechet_distance_extrapolated`, FD_inf), which is the fairer
    comparison when FD's finite-sample bias differs between sample sets.

    Args:
      samples: (n, H, W, 1) floats in [-1, 1], H = W in {8, 16, 32}; non-finite samples allowed.
      reference: "all", "train" or "test" (a split of the real digits), or a `FeatureStats` of this classifier.
      size: None (from the samples) or the expected size.
      extrapolate: also compute FD_inf and FD on nested subsets.
      cache_dir: the classifier cache; None: `default_cache_dir()`.

    Returns:
      {"fd_digits": FD of the finite samples, or None when fewer than two are finite; with `extrapolate` also
      "fd_digits_inf" (None below the smallest subset size) and "fd_digits_by_n" ({str(n): FD on n samples});
      "num_nonfinite": how many samples were left out}.
    """
    samples = np.asarray(samples)
    finite = np.all(np.isfinite(samples.reshape(samples.shape[0], -1)), axis=1)
    out = {"fd_digits": None}
    if extrapolate:
        out.update(fd_digits_inf=None, fd_digits_by_n=None)
    out["num_nonfinite"] = int((~finite).sum())
    if finite.sum() < 2:
        return out
    size = samples.shape[1] if size is None else size
    sample_features = features(size, samples[finite], cache_dir=cache_dir)
    if not isinstance(reference, FeatureStats):
        reference = reference_stats(size, split=reference, cache_dir=cache_dir)
    out["fd_digits"] = frechet_distance(FeatureStats.from_features(sample_features), reference)
    if extrapolate:
        out["fd_digits_inf"], by_n = frechet_distance_extrapolated(sample_features, reference)
        out["fd_digits_by_n"] = {str(n): value for n, value in by_n.items()}
    return out


def half_indices(seed=SEED):
    """Two disjoint random halves (898 and 899) of the 1797 digits, drawn by `RandomState(seed)`: sorted indices."""
    perm = np.random.RandomState(seed).permutation(_digits_numpy(8)[1].shape[0])
    half = perm.shape[0] // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


def data_floor(size, cache_dir=None, seed=SEED):
    """FD between disjoint sets of real digits at size px, the finite-sample floor of FD-digits at these set sizes:
    {"train_vs_test": FD(train split, test split), "half_vs_half": FD of the two halves of `half_indices(seed)`}."""
    size = _check_size(size)
    images, _ = digits(size, "all")
    first, second = (feature_stats(images[h], size, cache_dir=cache_dir) for h in half_indices(seed))
    return {
        "train_vs_test": frechet_distance(reference_stats(size, "train", cache_dir),
                                          reference_stats(size, "test", cache_dir)),
        "half_vs_half": frechet_distance(first, second),
    }


__all__ = [
    "VERSION", "SIZES", "SEED", "DigitsClassifier", "Classifier", "digits", "split_indices", "train_classifier",
    "default_cache_dir", "weights_path", "save_classifier", "load_classifier", "features", "feature_stats",
    "reference_stats", "fd_digits", "score_samples", "half_indices", "data_floor",
]

