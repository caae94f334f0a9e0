"""Datasets that live on the device and give batches as a pure function of (key, step).

Every dataset has `name`, `shape` (one example's shape), `num_examples` (None for procedural sets),
`batch(key, step, batch_size)` (float32, (batch_size, *shape), jit-traceable with a traced int32 `step`) and
`sample(key, n)` (n examples for evaluation references). Because a batch depends only on (key, step), a resumed run
sees exactly the batches of an uninterrupted one: the project's convention is that per-step randomness is
derived, `fold_in(key, step)`, never carried in the state.

- Finite sets (`ArrayDataset`: digits, a folder of images, an .npz) hold one float32 array on the device. Example k
  of the global stream (k = step * batch_size + j) is `perm_e[k mod N]` with e = k // N and
  `perm_e = jax.random.permutation(fold_in(key, e), N)`: every epoch visits every example once, and the shuffle is
  computed inside jit (a batch spans at most two epochs, as batch_size <= N is required).
- Procedural 2D sets (moons, 8gaussians, checkerboard, swissroll) draw fresh points from `fold_in(key, step)`; their
  defaults follow the flow-matching (TorchCFM; Tong et al. 2023, arXiv:2302.00482) and FFJORD (Grathwohl et al.
  2019, arXiv:1810.01367) toy benchmarks, re-implemented in JAX.

Images are channels-last, (H, W, C), scaled to [-1, 1]. All option and file checks happen in `get_dataset`, before
any training.

>>> ds = get_dataset("moons")
>>> ds.batch(jax.random.PRNGKey(0), 3, 5).shape
(5, 2)
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fastsamplers.core import Registry

_INT32_LIMIT = 2**31
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# `jax.image.resize` methods for the images of a dataset.
RESIZE_METHODS = Registry.of_names("resize_method", ("nearest", "bilinear", "cubic", "lanczos3", "lanczos5"),
                                   ordered=True, unknown="{dataset}: {kind} must be one of {choices}, got {name!r}")


# ------------------------------------------------------------------------------------------------------------------
# Finite datasets
# ------------------------------------------------------------------------------------------------------------------


class ArrayDataset(struct.PyTreeNode):
    """A finite dataset held as one float32 array of shape (N, *shape) on the device (a pytree: pass it to jit).

    Build it with `ArrayDataset.from_array`, which checks and converts the array; the constructor does not.
    """

    data: jax.Array
    labels: jax.Array | None = None  # (N,) int32 class labels 0..num_classes-1, when the set has them
    name: str = struct.field(pytree_node=False, default="array")

    @classmethod
    def from_array(cls, array, name="array", labels=None):
        """Checks `array` ((N, *shape), N >= 1, finite) and stores it as float32 on the default device.

        Args:
          array: examples along the first axis.
          name: the dataset's name.
          labels: optional (N,) non-negative integer class labels.

        Returns:
          An `ArrayDataset`.
        """
        array = np.asarray(array)
        if array.ndim < 2 or array.shape[0] < 1:
            raise ValueError(f"{name}: expected an array (N, *shape) with N >= 1, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: the array holds NaN or Inf")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != array.shape[:1] or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise ValueError(f"{name}: labels must be {array.shape[0]} non-negative integers, got "
                                 f"{labels.dtype} {labels.shape}")
            labels = jnp.asarray(labels.astype(np.int32))
        return cls(data=jnp.asarray(array.astype(np.float32)), labels=labels, name=name)

    @property
    def num_classes(self):
        """1 + the largest label (0 for a set without labels)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    @property
    def shape(self):
        return tuple(self.data.shape[1:])

    @property
    def num_examples(self):
        return int(self.data.shape[0])

    def indices(self, key, step, batch_size):
        """The dataset indices of batch `step`: entries step*batch_size .. +batch_size-1 of the epoch-wise stream.

        Args:
          key: the data key (the same for the whole run).
          step: int32 scalar, may be traced.
          batch_size: a Python int, 1 <= batch_size <= num_examples.

        Returns:
          int32 array (batch_size,).
        """
        n = self.num_examples
        if not 1 <= batch_size <= n:
            raise ValueError(f"{self.name}: batch_size must lie in [1, {n}] (the number of examples), got {batch_size}")
        epoch, offset = _stream_position(jnp.asarray(step, jnp.int32), batch_size, n)
        position = offset + jnp.arange(batch_size, dtype=jnp.int32)  # < 2n: at most one epoch boundary
        wrapped = position >= n
        local = jnp.where(wrapped, position - n, position)
        this_epoch = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        next_epoch = jax.random.permutation(jax.random.fold_in(key, epoch + 1), n)
        return jnp.where(wrapped, next_epoch[local], this_epoch[local]).astype(jnp.int32)

    def batch(self, key, step, batch_size):
        """Batch `step` of the shuffled stream: float32 (batch_size, *shape); see the module docstring."""
        return self.data[self.indices(key, step, batch_size)].astype(jnp.float32)

    def batch_labels(self, key, step, batch_size):
        """The labels of batch `step` (the same examples as `batch`): int32 (batch_size,)."""
        if self.labels is None:
            raise ValueError(f"{self.name}: this dataset has no labels (a class-conditional model needs them)")
        return self.labels[self.indices(key, step, batch_size)]

    def sample(self, key, n):
        """`n` distinct examples drawn without replacement (n <= num_examples): float32 (n, *shape)."""
        if not 1 <= n <= self.num_examples:
            raise ValueError(f"{self.name}: can draw 1 to {self.num_examples} distinct examples, not {n}")
        return self.data[jax.random.permutation(key, self.num_examples)[:n]].astype(jnp.float32)


def _stream_position(step, batch_size, n):
    """(epoch, offset) with step * batch_size = epoch * n + offset, 0 <= offset < n, free of int32 overflow."""
    # step = a*n + b, so step*batch_size = (a*batch_size)*n + b*batch_size, and b*batch_size < n*batch_size.
    a, b = jnp.divmod(step, n)
    if n * batch_size < _INT32_LIMIT:
        q, r = jnp.divmod(b * batch_size, n)
    else:
        q, r = _mul_divmod(b, batch_size, n)
    return (a * batch_size + q).astype(jnp.int32), r.astype(jnp.int32)


def _mul_divmod(b, m, n):
    """divmod(b * m, n) for 0 <= b, m < n < 2**31 by binary long multiplication in uint32 (no wider ints needed)."""
    b = b.astype(jnp.uint32)
    m, n = jnp.uint32(m), jnp.uint32(n)
    q = jnp.uint32(0)
    r = jnp.uint32(0)
    for bit in range(30, -1, -1):  # invariant: (b >> bit) * m = q * n + r, r < n; 2r and r + m stay below 2**32
        q, r = 2 * q, 2 * r
        carry = r >= n
        q, r = q + carry.astype(jnp.uint32), jnp.where(carry, r - n, r)
        on = ((b >> bit) & 1).astype(bool)
        r = jnp.where(on, r + m, r)
        carry = r >= n
        q, r = q + carry.astype(jnp.uint32), jnp.where(carry, r - n, r)
    return q, r


# ------------------------------------------------------------------------------------------------------------------
# Procedural 2D datasets
# ------------------------------------------------------------------------------------------------------------------


class _Procedural(struct.PyTreeNode):
    """A 2D distribution sampled afresh: batch `step` is `sample(fold_in(key, step), batch_size)`.

    All fields are static, so instances are hashable (usable as jit static arguments) and pytrees without leaves.
    """

    name: ClassVar[str] = ""
    shape: ClassVar[tuple] = (2,)
    num_examples: ClassVar[None] = None

    def batch(self, key, step, batch_size):
        """float32 (batch_size, 2) drawn from `fold_in(key, step)`; `step` may be traced."""
        return self.sample(jax.random.fold_in(key, jnp.asarray(step, jnp.int32)), batch_size)

    def sample(self, key, n):
        """`n` i.i.d. points, float32 (n, 2)."""
        return self._draw(key, n).astype(jnp.float32)

    def _draw(self, key, n):
        raise NotImplementedError


def _uniform(key, n):
    return jax.random.uniform(key, (n,), jnp.float32)


class Moons(_Procedural):
    """Two interleaved half circles, sklearn's `make_moons` (noise: Gaussian std on the unit-radius moons), then
    `* scale + shift`. Defaults: TorchCFM's benchmark, `make_moons(n, noise=0.2) * 3 - 1` (Tong et al. 2023).
    sklearn splits n in two halves at evenly spaced angles; here moon ~ Bernoulli(1/2), angle ~ U[0, pi], i.e. i.i.d.
    draws from the same distribution in the limit of many points."""

    name: ClassVar[str] = "moons"
    noise: float = struct.field(pytree_node=False, default=0.2)
    scale: float = struct.field(pytree_node=False, default=3.0)
    shift: float = struct.field(pytree_node=False, default=-1.0)

    def _draw(self, key, n):
        k_moon, k_angle, k_noise = jax.random.split(key, 3)
        inner = jax.random.bernoulli(k_moon, 0.5, (n,))
        angle = math.pi * _uniform(k_angle, n)
        # Outer moon: (cos, sin); inner moon: (1 - cos, 0.5 - sin).
        x = jnp.where(inner, 1.0 - jnp.cos(angle), jnp.cos(angle))
        y = jnp.where(inner, 0.5 - jnp.sin(angle), jnp.sin(angle))
        points = jnp.stack([x, y], axis=-1) + self.noise * jax.random.normal(k_noise, (n, 2), jnp.float32)
        return points * self.scale + self.shift


class EightGaussians(_Procedural):
    """Eight equal-weight isotropic Gaussians centred at radius * (cos, sin)(k pi / 4), k = 0..7.

    Defaults are TorchCFM's `sample_8gaussians` (Tong et al. 2023): radius 5 and covariance sqrt(0.1) * I (its
    `MultivariateNormal(0, sqrt(var) * I)` with var=0.1), i.e. std 0.1**0.25 ~ 0.562. FFJORD's (Grathwohl et al.
    2019) variant is radius=4/sqrt(2) ~ 2.83, std=0.5/sqrt(2) ~ 0.354.
    """

    name: ClassVar[str] = "8gaussians"
    radius: float = struct.field(pytree_node=False, default=5.0)
    std: float = struct.field(pytree_node=False, default=0.1**0.25)

    def _draw(self, key, n):
        k_centre, k_noise = jax.random.split(key)
        angle = (math.pi / 4) * jax.random.randint(k_centre, (n,), 0, 8).astype(jnp.float32)
        centres = self.radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
        return centres + self.std * jax.random.normal(k_noise, (n, 2), jnp.float32)


class Checkerboard(_Procedural):
    """FFJORD's checkerboard (Grathwohl et al. 2019): uniform on the 8 dark squares of a 4x4 board of unit squares
    covering [-2, 2]^2, times `scale` (2 in FFJORD, so the board covers [-4, 4]^2)."""

    name: ClassVar[str] = "checkerboard"
    scale: float = struct.field(pytree_node=False, default=2.0)

    def _draw(self, key, n):
        k_x, k_y, k_row = jax.random.split(key, 3)
        x = 4.0 * _uniform(k_x, n) - 2.0
        # y in [0, 1) or [-2, -1), shifted up by one where floor(x) is odd: alternating squares.
        row = 2.0 * jax.random.bernoulli(k_row, 0.5, (n,)).astype(jnp.float32)
        y = _uniform(k_y, n) - row + jnp.mod(jnp.floor(x), 2.0)
        return self.scale * jnp.stack([x, y], axis=-1)


class SwissRoll(_Procedural):
    """The 2D swiss roll of FFJORD (Grathwohl et al. 2019): sklearn's `make_swiss_roll` (t = 1.5 pi (1 + 2u),
    point (t cos t, t sin t) plus Gaussian noise of std `noise`), keeping its x and z coordinates, times `scale`
    (FFJORD: noise 1, divided by 5, which gives roughly unit variance per coordinate)."""

    name: ClassVar[str] = "swissroll"
    noise: float = struct.field(pytree_node=False, default=1.0)
    scale: float = struct.field(pytree_node=False, default=0.2)

    def _draw(self, key, n):
        k_t, k_noise = jax.random.split(key)
        t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(k_t, n))
        points = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1)
        return self.scale * (points + self.noise * jax.random.normal(k_noise, (n, 2), jnp.float32))


# ------------------------------------------------------------------------------------------------------------------
# Loaders of finite image datasets
# ------------------------------------------------------------------------------------------------------------------


def load_digits(image_size=8, resize_method="bilinear"):
    """scikit-learn's 8x8 handwritten digits (1797 images, values 0..16) scaled to [-1, 1], shape (N, s, s, 1).

    Args:
      image_size: 8 (native), 16 or 32; larger sizes are resized once at load time and clipped to [-1, 1].
      resize_method: a `jax.image.resize` method, e.g. "bilinear" or "cubic".

    Returns:
      An `ArrayDataset` named "digits".
    """
    if image_size not in (8, 16, 32):
        raise ValueError(f"digits: image_size must be 8, 16 or 32, got {image_size!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.astype(np.float32)[..., None] / 8.0 - 1.0
    return ArrayDataset.from_array(_resize(images, image_size, resize_method, "digits"), name="digits",
                                   labels=digits.target)


def load_folder(path, channels=3, image_size=None, resize_method="bilinear"):
    """Every .png/.jpg/.jpeg file directly inside `path` (sorted by name), loaded with PIL and scaled to [-1, 1].

    Args:
      path: a directory of images.
      channels: 1 (grayscale) or 3 (RGB).
      image_size: None (all images must share one size), an int (square) or (height, width): images are resized.
      resize_method: a `jax.image.resize` method.

    Returns:
      An `ArrayDataset` named "folder", shape (N, H, W, channels).
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"folder: channels must be 1 or 3, got {channels!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"folder: no such directory: {path}")
    if not os.path.isdir(path):
        raise ValueError(f"folder: {path} is not a directory")
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"folder: {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    images = []
    for name in files:
        try:
            with Image.open(os.path.join(path, name)) as image:
                array = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"folder: cannot read {os.path.join(path, name)}: {error}") from error
        images.append(array.reshape(array.shape[:2] + (channels,)) / 127.5 - 1.0)
    sizes = sorted({image.shape[:2] for image in images})
    if image_size is None:
        if len(sizes) > 1:
            raise ValueError(f"folder: images in {path} differ in size ({sizes[:5]}...); pass image_size=")
        return ArrayDataset.from_array(np.stack(images), name="folder")
    target = _size_pair(image_size, "folder")
    RESIZE_METHODS.check(resize_method, dataset="folder")
    # One resize call per distinct source size (a batched call instead of one per image).
    out = np.empty((len(images),) + target + (channels,), np.float32)
    for size in sizes:
        which = [i for i, image in enumerate(images) if image.shape[:2] == size]
        out[which] = _resize(np.stack([images[i] for i in which]), target, resize_method, "folder")
    return ArrayDataset.from_array(out, name="folder")


def load_npz(path, key=None, image_size=None, resize_method="bilinear"):
    """Images from an .npz file: uint8 in [0, 255], or float already in [-1, 1]; (N, H, W) or (N, H, W, C).

    Args:
      path: the .npz file.
      key: the array's name; None: "images" if present, else the file's only array.
      image_size: None (keep), an int (square) or (height, width): resized at load time, clipped to [-1, 1].
      resize_method: a `jax.image.resize` method.

    Returns:
      An `ArrayDataset` named "npz", shape (N, H, W, C).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"npz: no such file: {path}")
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if key is None:
            if "images" in names:
                key = "images"
            elif len(names) == 1:
                key = names[0]
            else:
                raise ValueError(f"npz: {path} holds several arrays {names} and none is 'images'; pass key=")
        if key not in names:
            raise ValueError(f"npz: {path} has no array {key!r}; it holds {names}")
        array = archive[key]
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[0] < 1:
        raise ValueError(f"npz: {key!r} must be (N, H, W) or (N, H, W, C) images, got shape {array.shape}")
    if array.dtype == np.uint8:
        images = array.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high) and -1.0 <= low and high <= 1.0):
            raise ValueError(f"npz: float images must lie in [-1, 1]; {key!r} spans [{low}, {high}]")
        images = array.astype(np.float32)
    else:
        raise ValueError(f"npz: {key!r} has dtype {array.dtype}; expected uint8 (0..255) or float in [-1, 1]")
    if image_size is not None:
        images = _resize(images, _size_pair(image_size, "npz"), resize_method, "npz")
    return ArrayDataset.from_array(images, name="npz")


def _size_pair(image_size, name):
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
        raise ValueError(f"{name}: image_size must be a positive int or (height, width), got {image_size!r}")
    return tuple(int(s) for s in size)


def _resize(images, image_size, method, name):
    """Resizes (N, H, W, C) images in [-1, 1] to image_size (an int or a pair) and clips back to [-1, 1]."""
    RESIZE_METHODS.check(method, dataset=name)
    size = _size_pair(image_size, name)
    if tuple(images.shape[1:3]) == size:
        return np.asarray(images, np.float32)
    shape = (images.shape[0],) + size + (images.shape[3],)
    resized = jax.image.resize(jnp.asarray(images, jnp.float32), shape, method)
    return np.clip(np.asarray(resized, np.float32), -1.0, 1.0)


# ------------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------------

DATASETS = Registry("dataset", {
    "moons": Moons,
    "8gaussians": EightGaussians,
    "checkerboard": Checkerboard,
    "swissroll": SwissRoll,
    "digits": load_digits,
    "folder": load_folder,
    "npz": load_npz,
})


def get_dataset(name: str, **options: Any) -> ArrayDataset | _Procedural:
    """Builds a registered dataset; every check (names, options, files) happens here.

    Args:
      name: one of `DATASETS`: "moons", "8gaussians", "checkerboard", "swissroll", "digits", "folder", "npz".
      **options: that dataset's keyword options (e.g. `noise=` for moons, `path=` for folder and npz).

    Returns:
      A dataset with `name`, `shape`, `num_examples`, `batch(key, step, batch_size)` and `sample(key, n)`.

    >>> get_dataset("digits", image_size=16).shape
    (16, 16, 1)
    """
    return DATASETS.build(name, **options)
