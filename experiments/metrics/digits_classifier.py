"""The FD-digits classifier: a small CNN for scikit-learn's 8x8 handwritten digits at 8, 16 or 32 px, the digits and
the split it is trained and scored on, and its weights files. Training: `digits_training`; the metric: `fd_digits`.

The network (`DigitsClassifier`, Flax Linen, NHWC input in [-1, 1]): at 8 and 16 px a 3x3 convolution at full
resolution (32 resp. 16 channels), then 4x4 convolutions of stride 2 down to 4x4 (8 px: 32 channels; 16 px: 32, 32;
32 px: 16, 32, 32), a 3x3 convolution with 64 channels at 4x4, flatten (1024), Dense(128) -- its pre-activations
are the features -- then ReLU and a Dense(10) head; ReLU after every convolution. The features are taken before the
ReLU so that none is identically zero on the digits (a third of the ReLU units are), which keeps the covariances of
full rank and scipy's sqrtm well conditioned.

The data: all 1797 digits (`experiments.train.data.load_digits`, 16 and 32 px being the 8 px digits resized
bilinearly, as the generative models see them). The split: a stratified 80/20 split, 20% of each class drawn with
numpy's legacy (stream-stable) `RandomState(SEED)`: 1438 training and 359 held-out images (`split_indices`).

The weights: `classifier_{size}px_{VERSION}.msgpack` (flax msgpack, with a `.json` of accuracy, seed and version
beside it) in `$FASTSAMPLERS_CACHE/fd_digits`, else `~/.cache/fastsamplers/fd_digits`. Changing the architecture,
the training recipe or the split must bump `VERSION`: FD-digits values are comparable only between runs of one
classifier (version, size, seed) and one reference split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from fastsamplers import core

VERSION = "v1"
SIZES = (8, 16, 32)
SEED = 0
FEATURE_DIM = 128
NUM_CLASSES = 10
TEST_FRACTION = 0.2
# The real digits a distance is taken against (`digits`, `fd_digits.reference_stats`): all, or a side of the split.
SPLITS = core.Registry.of_names("split", ("all", "train", "test"), ordered=True,
                                unknown="{kind} must be one of {choices}, got {name!r}")

_STEM_WIDTH = {8: 32, 16: 16, 32: None}  # a full-resolution 3x3 convolution first (not at 32 px: time)
_STAGE_WIDTHS = {8: (32,), 16: (32, 32), 32: (16, 32, 32)}


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


@dataclasses.dataclass(frozen=True)
class ClassReward:
    """A reward for `samplers.scaling` searches: reward(images, (params, label)) = log p(label | images), the
    classifier's log-probability of one class, per image (n,) for images (n, size, size, 1) clipped to [-1, 1] as
    FD-digits scores them. The parameters and the label travel as `reward_args` (traced: never compiled in).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> reward = ClassReward(8)
        >>> params = reward.init(jax.random.PRNGKey(0))
        >>> reward(jnp.zeros((3, 8, 8, 1)), (params, jnp.int32(4))).shape
        (3,)
    """

    size: int

    def __call__(self, images: jax.Array, reward_args: tuple) -> jax.Array:
        params, label = reward_args
        logits = DigitsClassifier(self.size).apply({"params": params}, jnp.clip(images, -1, 1).astype(jnp.float32))
        return jnp.take(jax.nn.log_softmax(logits, axis=-1), label, axis=-1)

    def init(self, key: jax.Array) -> dict:
        """Untrained parameters (for smoke tests; the real ones are a `Classifier`'s `params`)."""
        return DigitsClassifier(self.size).init(key, jnp.zeros((1, self.size, self.size, 1), jnp.float32))["params"]


def check_size(size):
    """`size` as an int, if it is one of `SIZES`; ValueError otherwise."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in SIZES:
        raise ValueError(f"FD-digits supports image sizes 8, 16 and 32 (square, one channel), got {size!r}")
    return int(size)


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
    size = check_size(size)
    images, labels = _digits_numpy(size)
    if SPLITS.check(split) == "all":
        return images, labels
    index = split_indices()[0 if split == "train" else 1]
    return images[index], labels[index]


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


def half_indices(seed=SEED):
    """Two disjoint random halves (898 and 899) of the 1797 digits, drawn by `RandomState(seed)`: sorted indices."""
    perm = np.random.RandomState(seed).permutation(_digits_numpy(8)[1].shape[0])
    half = perm.shape[0] // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


# ------------------------------------------------------------------------------------------------------------------
# Weights files
# ------------------------------------------------------------------------------------------------------------------


def default_cache_dir():
    """`$FASTSAMPLERS_CACHE/fd_digits`, else `~/.cache/fastsamplers/fd_digits`."""
    root = os.environ.get("FASTSAMPLERS_CACHE")
    if root:
        return os.path.join(os.path.expanduser(root), "fd_digits")
    return os.path.join(os.path.expanduser("~"), ".cache", "fastsamplers", "fd_digits")


def weights_path(size, cache_dir=None):
    """The weights file of the size-px classifier of `VERSION` in the cache (its `.json` record lies beside it)."""
    size = check_size(size)
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


def read_classifier(size, cache_dir=None):
    """The size-px classifier of `VERSION` from its weights file (FileNotFoundError when absent).

    Raises:
      ValueError: the weights file does not hold this classifier's parameters (wrong size, version or a damaged
        file); the message names the file to delete.
    """
    size = check_size(size)
    path = weights_path(size, cache_dir)
    fix = f"delete it to retrain, or run scripts/train_fd_digits.py --size {size} --retrain"
    with open(path, "rb") as f:
        data = f.read()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several types for damaged data
        raise ValueError(f"{path} is not a readable FD-digits weights file ({error}); {fix}") from error
    expected = _shapes(serialization.to_state_dict(_param_template(size)))
    found = _shapes(state) if isinstance(state, dict) else repr(type(state))
    if found != expected:
        raise ValueError(f"{path} does not hold the {size}px FD-digits classifier {VERSION}: parameter shapes "
                         f"{_describe(found)} where {_describe(expected)} are expected; {fix}")
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), state)
    info = core.read_json(_info_path(path), what="FD-digits classifier record") if os.path.exists(_info_path(path)) else {}
    return Classifier(size, DigitsClassifier(size), params, info, path)


def _param_template(size):
    """The shapes and dtypes of the classifier's parameters (no computation)."""
    model = DigitsClassifier(size)
    dummy = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), dummy)["params"]


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
