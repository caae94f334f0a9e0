"""The FID Inception-v3 network in Flax: 2048-d "pool3" features of images, as pytorch-fid computes them.

The network is the TF-slim Inception-v3 graph of 2015-12-05 that FID (Heusel et al. 2017) is defined with, as
pytorch-fid (M. Seitzer, `pytorch_fid.inception.fid_inception_v3`) ports it: torchvision's `Inception3` with 1008
classes and no auxiliary head, whose blocks Mixed_5b/5c/5d, 6b..6e and 7b differ from torchvision's in that the
average pool of their pool branch does not count the zero padding (TensorFlow's), and whose last block Mixed_7c
max-pools (3x3, stride 1, pad 1) in that branch. Every convolution is conv (no bias) + BatchNorm (eps 1e-3, the
stored running statistics) + ReLU. The features are the global average pool after Mixed_7c; the classifier is not
built. Our features equal pytorch-fid's `InceptionV3([3])` (resize_input, normalize_input) features up to float32
rounding (`tests/test_inception.py` checks this against pytorch-fid itself), so FIDs computed from them are
comparable with pytorch-fid's.

Weights: nothing here downloads anything. The user supplies pytorch-fid's released file
`pt_inception-2015-12-05-6726825d.pth` (the TF graph's weights ported to PyTorch) and converts it once, in an
environment that has PyTorch, into our own `.npz`:

    python scripts/convert_inception_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The `.npz` holds one float32 array per flat key, "Conv2d_1a_3x3/conv/kernel" (HWIO), ".../bn/scale",
".../bn/bias", ".../bn/mean", ".../bn/var"; `load_params` checks it against the network and returns the Flax
variables {"params": ..., "batch_stats": ...} that `features` takes.

Input convention (ours): NHWC float images in [-1, 1] of any size; one channel (grayscale) is repeated to three.
They are resized to 299x299 as PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` does (no
antialiasing), as pytorch-fid does with [0, 1] images before mapping them to [-1, 1] (the two steps commute).

Cost: about 6 GFLOPs an image at 299x299, which is slow on a CPU; FD-digits (`experiments.metrics.fd_digits`) is the
metric for offline runs, FID the one for accelerators.
"""

from __future__ import annotations

import functools
import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fastsamplers import core

INPUT_SIZE = 299
FEATURE_DIM = 2048
# float32 convolutions and resize without TF32/bf16 passes on accelerators: FID is sensitive to feature rounding.
_PRECISION = jax.lax.Precision.HIGHEST


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """Conv (no bias) + inference BatchNorm (eps 1e-3) + ReLU: (n, h, w, c) -> (n, h', w', features)."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), _pair(self.stride), ((ph, ph), (pw, pw)), use_bias=False,
                    precision=_PRECISION, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """3x3, stride 1, pad 1 average pool over the in-image pixels only (TF's; torch's count_include_pad=False):
    (n, h, w, c) -> (n, h, w, c) in x's dtype."""
    sums = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows, cols = (np.full(n, 3.0) - (np.arange(n) == 0) - (np.arange(n) == n - 1) for n in x.shape[1:3])
    return sums / jnp.asarray(np.outer(rows, cols)[None, :, :, None], x.dtype)


def _max_pool_3x3(x, stride):
    """3x3 max pool: stride 2 unpadded (a reduction) or stride 1 padded by 1 with -inf (Mixed_7c's pool branch)."""
    padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), (stride, stride), padding)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (35x35): (n, 35, 35, c) -> (n, 35, 35, 224 + pool_features)."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (reduction): (n, 35, 35, 288) -> (n, 17, 17, 768)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (17x17, factorised 7x7): (n, 17, 17, 768) -> (n, 17, 17, 768)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (reduction): (n, 17, 17, 768) -> (n, 8, 8, 1280)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (pool="avg", padding not counted) and Mixed_7c (pool="max"): (n, 8, 8, c) -> (n, 8, 8, 2048)."""

    pool: str

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_matrix(size_in, size_out):
    """(size_out, size_in) float64 matrix of PyTorch's bilinear interpolation along one axis, align_corners=False,
    no antialiasing: output i samples the input at max((i + 0.5) * size_in / size_out - 0.5, 0) between its two
    neighbours (the upper one clamped to the last pixel)."""
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    m = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_bilinear(images, height, width):
    """(n, h, w, c) -> (n, height, width, c) float32, as torch's F.interpolate(bilinear, align_corners=False).
    The sample positions are exact (float64); torch's are float32, which moves its pixels by up to ~1e-7 * size."""
    rows = jnp.asarray(bilinear_matrix(images.shape[1], height), jnp.float32)
    cols = jnp.asarray(bilinear_matrix(images.shape[2], width), jnp.float32)
    x = jnp.einsum("ih,nhwc->niwc", rows, images.astype(jnp.float32), precision=_PRECISION)
    return jnp.einsum("jw,niwc->nijc", cols, x, precision=_PRECISION)


class InceptionV3(nn.Module):
    """The FID network: NHWC images in [-1, 1] (1 or 3 channels, any size) -> (n, 2048) float32 pool3 features."""

    @nn.compact
    def __call__(self, images):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be (n, h, w, 1 or 3), got shape {images.shape}")
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        x = resize_bilinear(images, INPUT_SIZE, INPUT_SIZE)  # (n, 299, 299, 3)
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)  # (n, 149, 149, 32)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)  # (n, 147, 147, 32)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)  # (n, 147, 147, 64)
        x = _max_pool_3x3(x, 2)  # (n, 73, 73, 64)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)  # (n, 73, 73, 80)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)  # (n, 71, 71, 192)
        x = _max_pool_3x3(x, 2)  # (n, 35, 35, 192)
        x = InceptionA(32, name="Mixed_5b")(x)  # (n, 35, 35, 256)
        x = InceptionA(64, name="Mixed_5c")(x)  # (n, 35, 35, 288)
        x = InceptionA(64, name="Mixed_5d")(x)  # (n, 35, 35, 288)
        x = InceptionB(name="Mixed_6a")(x)  # (n, 17, 17, 768)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)  # (n, 17, 17, 768)
        x = InceptionD(name="Mixed_7a")(x)  # (n, 8, 8, 1280)
        x = InceptionE("avg", name="Mixed_7b")(x)  # (n, 8, 8, 2048)
        x = InceptionE("max", name="Mixed_7c")(x)  # (n, 8, 8, 2048)
        return jnp.mean(x, axis=(1, 2))  # (n, 2048)


@jax.jit
def _apply(params, images):
    return InceptionV3().apply(params, images)


def features(params, images, batch_size=50):
    """Pool3 features (n, 2048) float32 numpy of NHWC images in [-1, 1] (n, h, w, 1 or 3), `batch_size` at a time
    (the last batch is padded, so one shape compiles once)."""
    if np.ndim(images) != 4 or np.shape(images)[-1] not in (1, 3):
        raise ValueError(f"images must be (n, h, w, 1 or 3), got shape {np.shape(images)}")
    batch_size = max(1, min(batch_size, images.shape[0]))
    out = [np.asarray(_apply(params, jnp.asarray(batch, jnp.float32)))[:m]
           for _, batch, m in core.padded_batches(np.asarray(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


@functools.lru_cache(maxsize=1)
def _template():
    """{flat key: (collection, shape)} of the network's variables, from `jax.eval_shape` of its init."""
    shapes = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    return {"/".join(path): (collection, leaf.shape)
            for (collection, *path), leaf in traverse_util.flatten_dict(shapes).items()}


def _listed(keys, limit=8):
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def unflatten_params(flat, source="params"):
    """Flax variables {"params": ..., "batch_stats": ...} of a {flat key: array} dict, checked against the network:
    a ValueError naming `source` lists missing and unexpected keys and shape mismatches."""
    template = _template()
    problems = []
    if missing := template.keys() - flat.keys():
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected := flat.keys() - template.keys():
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if bad := [f"{k} {tuple(np.shape(flat[k]))} (expected {template[k][1]})"
               for k in sorted(template.keys() & flat.keys()) if tuple(np.shape(flat[k])) != template[k][1]]:
        problems.append(f"shape mismatches: {_listed(bad)}")
    if problems:
        raise ValueError(f"{source} does not hold the FID Inception-v3 weights: " + "; ".join(problems))
    return traverse_util.unflatten_dict(
        {(template[k][0], *k.split("/")): jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def flatten_params(params):
    """{flat key: float32 numpy array} of Flax variables (the inverse of `unflatten_params`)."""
    return {"/".join(path): np.asarray(v, np.float32) for (_, *path), v in traverse_util.flatten_dict(params).items()}


def save_params(params, path):
    """Writes Flax variables to `path` as our flat `.npz`."""
    with open(path, "wb") as f:
        np.savez(f, **flatten_params(params))


def load_params(path):
    """Flax variables of the FID network from our `.npz` (see the module docstring for how to make one)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights {path!r} not found: convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
            "with scripts/convert_inception_weights.py --pth ... --out ... (nothing is downloaded)")
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable .npz of FID Inception weights: {e}") from e
    return unflatten_params(flat, source=repr(path))


def init_random_params(seed=0):
    """Random Flax variables of the network (for tests; features are meaningless): He-normal kernels, and batch
    norms with random scales, biases and running statistics, so that activations stay of order one."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, (_, shape) in _template().items():
        leaf = key.rsplit("/", 1)[1]
        if leaf == "kernel":
            v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:3]))
        elif leaf in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            v = 0.1 * rng.standard_normal(shape)
        flat[key] = v.astype(np.float32)
    return unflatten_params(flat, source=f"init_random_params({seed})")


_TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def convert_torch_state_dict(state_dict):
    """Flax variables from pytorch-fid's FID Inception state dict {name: numpy array}, named as in
    `pt_inception-2015-12-05-6726825d.pth` ("Mixed_5b.branch1x1.conv.weight" OIHW, "....bn.weight", "....bn.bias",
    "....bn.running_mean", "....bn.running_var"). The classifier ("fc.*") and "*.num_batches_tracked" are dropped;
    any other key that the network does not have, or a missing one, is an error."""
    flat, used = {}, set()
    missing = []
    for key in _template():
        *path, leaf = key.split("/")
        name = ".".join([*path, _TORCH_LEAVES[leaf]])
        if name not in state_dict:
            missing.append(name)
            continue
        value = np.asarray(state_dict[name], np.float32)
        flat[key] = value.transpose(2, 3, 1, 0) if leaf == "kernel" and value.ndim == 4 else value  # OIHW -> HWIO
        used.add(name)
    unexpected = [k for k in state_dict
                  if k not in used and k not in ("fc.weight", "fc.bias") and not k.endswith(".num_batches_tracked")]
    if missing or unexpected:
        raise ValueError("the state dict is not pytorch-fid's FID Inception-v3: "
                         + "; ".join(f"{what} keys: {_listed(keys)}"
                                     for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    return unflatten_params(flat, source="the converted state dict")
