"""Reference statistics for Fréchet distances: the files a reference comes in, checked before any sampling, and
their statistics in a feature's space.

A reference is one of `KINDS`:

- "stats": an .npz of `mu` and `sigma` (pytorch-fid's statistics files; EDM's fid-refs hold exactly these two
  arrays; `FeatureStats.save` writes them with `count`), used as they are;
- "activations": an .npz of pool3 activations `pool_3` (n, d) (score_sde's assets/stats/cifar10_stats.npz), whose
  statistics are computed here, a few thousand rows at a time;
- "images": an .npz of uint8 NHWC images (key `images`, else its first array), streamed without loading it whole;
- "folder": a folder of PNG / JPEG images (read as RGB or grayscale, the model's channels), in sorted order.

Images go through the feature network (`features.stream_stats`) and their statistics are cached in a folder the
caller names (keyed by the reference's and the feature's hashes). score_sde's activations come from TF-GAN's run of
the 2015 Inception graph, with TensorFlow's resize instead of PyTorch's bilinear one (ours and pytorch-fid's):
close, not bit-equal, features; compare FIDs measured against the same reference file.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from fastsamplers import core
from fastsamplers.experiments.metrics import features as features_lib
from fastsamplers.experiments.metrics.frechet import FeatureStats, Moments

KINDS = ("an .npz of mu and sigma (pytorch-fid, EDM fid-refs), an .npz of pool_3 activations "
         "(score_sde), an .npz of uint8 images, or a folder of PNG / JPEG images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ACTIVATION_ROWS = 5000  # rows of a pool_3 array read at a time


@dataclasses.dataclass(frozen=True)
class Reference:
    """A checked reference: `kind` is "stats" (mu, sigma), "activations" (pool_3), "images" (an .npz) or "folder"."""

    path: str
    kind: str
    sha256: str
    key: str | None = None  # the .npz key read
    files: tuple = ()  # a folder's images, sorted
    count: int | None = None
    channels: int = 3  # a folder's images are read as RGB (3) or grayscale (1): the model's channels

    def record(self):
        return {"path": self.path, "kind": self.kind, "sha256": self.sha256}


def check(path, feature: features_lib.Feature, image_shape) -> Reference:
    """Read enough of the reference to know its kind and check it against the feature and the model's images; every
    failure is a sentence naming the file."""
    if not path:
        raise ValueError(f"config.reference is empty: give {KINDS}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference {path!r} not found")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        files = tuple(sorted(os.path.join(folder, f) for folder, _, names in os.walk(path) for f in names
                             if f.lower().endswith(IMAGE_EXTENSIONS)))
        if not files:
            raise ValueError(f"reference folder {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        _check_image_shape(_read_image(files[0], image_shape[-1]).shape, image_shape, feature, files[0])
        return Reference(path, "folder", _sha256_files(files, path), files=files, count=len(files),
                         channels=image_shape[-1])
    if not zipfile.is_zipfile(path):
        raise ValueError(f"reference {path!r} is neither a folder nor an .npz; give {KINDS}")
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.files)
        if "mu" in keys or "sigma" in keys:
            if not {"mu", "sigma"} <= set(keys):
                raise ValueError(f"reference {path!r} has {'mu' if 'mu' in keys else 'sigma'} but not "
                                 f"{'sigma' if 'mu' in keys else 'mu'}: statistics need both (its arrays: {keys})")
            mu, sigma = data["mu"], data["sigma"]
            if mu.shape != (feature.dim,) or sigma.shape != (feature.dim, feature.dim):
                raise ValueError(f"reference {path!r}: mu {mu.shape} and sigma {sigma.shape} do not match the "
                                 f"{feature.name} feature of dimension {feature.dim}")
            count = int(data["count"]) if "count" in keys else None
            return Reference(path, "stats", core.sha256_file(path), count=count)
        if "pool_3" in keys:
            shape, _ = npz_array_info(path, "pool_3")
            if len(shape) != 2 or shape[1] != feature.dim or shape[0] < 2:
                raise ValueError(f"reference {path!r}: pool_3 has shape {shape}, expected (n >= 2, {feature.dim}) "
                                 f"activations of the {feature.name} feature")
            return Reference(path, "activations", core.sha256_file(path), key="pool_3", count=shape[0])
    key = "images" if "images" in keys else (keys[0] if keys else None)
    shape, dtype = npz_array_info(path, key) if key is not None else ((), None)
    if dtype != np.uint8 or len(shape) != 4:
        got = "no arrays" if key is None else f"{key!r} of dtype {dtype} and shape {shape}"
        raise ValueError(f"reference {path!r} holds neither statistics (mu and sigma) nor activations (pool_3) nor "
                         f"uint8 NHWC images (key 'images' or the first array): it has {got}; its arrays: {keys}")
    if shape[0] < 2:
        raise ValueError(f"reference {path!r}: {shape[0]} image(s); statistics need at least 2")
    _check_image_shape(shape[1:], image_shape, feature, f"{path} [{key}]")
    return Reference(path, "images", core.sha256_file(path), key=key, count=int(shape[0]))


def _check_image_shape(shape, image_shape, feature, where):
    shape, image_shape = tuple(shape), tuple(image_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(f"reference image {where}: shape {shape} is not (H, W, 1 or 3) (NHWC)")
    if feature.image_shape is not None and shape != image_shape:
        raise ValueError(f"reference image {where}: shape {shape}, but the {feature.name} feature takes the "
                         f"model's images {image_shape}")


def _read_image(path, channels):
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB" if channels == 3 else "L"), np.uint8)
    return array[..., None] if array.ndim == 2 else array


def load(reference: Reference, feature: features_lib.Feature, *, batch_size: int, cache_dir: str,
         mesh=None) -> tuple[FeatureStats | Moments, dict]:
    """(statistics, record) of the reference in the feature's space. Images are featurised once (in batches of
    `batch_size`, over `mesh` if given) and their statistics cached in `cache_dir`; the record says where."""
    record = reference.record()
    if reference.kind == "stats":
        with np.load(reference.path, allow_pickle=False) as data:
            return Moments(np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64),
                           reference.count), dict(record, count=reference.count)
    if reference.kind == "activations":
        stats = FeatureStats.empty(feature.dim)
        with NpzRows(reference.path, "pool_3") as rows:
            for start in range(0, reference.count, ACTIVATION_ROWS):
                stats = stats.update(rows.read(start, min(start + ACTIVATION_ROWS, reference.count)))
        return stats, dict(record, count=stats.count)
    tag = core.fingerprint(feature.identity())[:12]
    cache = os.path.join(cache_dir, f"{reference.sha256[:16]}_{feature.name}_{tag}.npz")
    record.update(cache=cache)
    if os.path.isfile(cache):
        stats = FeatureStats.load(cache)
        return stats, dict(record, count=stats.count)
    if reference.kind == "images":
        with NpzRows(reference.path, reference.key) as rows:  # batch by batch, never the whole array in memory
            batches = (rows.read(start, min(start + batch_size, reference.count))
                       for start in range(0, reference.count, batch_size))
            stats = features_lib.stream_stats(feature, batches, batch_size, mesh)
    else:
        stats = features_lib.stream_stats(feature, _folder_batches(reference, batch_size), batch_size, mesh)
    stats.save(cache)
    return stats, dict(record, count=stats.count)


def of_images(images, feature: features_lib.Feature, *, batch_size: int, cache: str, mesh=None) -> FeatureStats:
    """Statistics of an in-memory image set (a training set: floats in [-1, 1] or uint8), computed once and cached
    in the file `cache`."""
    if os.path.isfile(cache):
        return FeatureStats.load(cache)
    stats = features_lib.stream_stats(feature, images, batch_size, mesh)
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    stats.save(cache)
    return stats


def _folder_batches(reference, batch_size):
    files = reference.files
    first = _read_image(files[0], reference.channels).shape
    for start in range(0, len(files), batch_size):
        images = [_read_image(f, reference.channels) for f in files[start:start + batch_size]]
        for f, image in zip(files[start:start + batch_size], images):
            if image.shape != first:
                raise ValueError(f"reference image {f}: shape {image.shape}, the folder's first image "
                                 f"{files[0]} has {first}; every reference image must have one shape")
        yield np.stack(images)


def _sha256_files(files, root):
    return core.fingerprint([[os.path.relpath(f, root), core.sha256_file(f)] for f in files])


def npz_array_info(path, key):
    """(shape, dtype) of the array `key` of an .npz, from its .npy header (the data is not read)."""
    with NpzRows(path, key) as rows:
        return rows.shape, rows.dtype


class NpzRows:
    """Rows of one array of an .npz read in order, `read(start, stop)` at a time, without loading the whole array
    (np.load reads it all): the .npy member is streamed out of the zip. Fortran-ordered arrays are loaded whole."""

    def __init__(self, path, key):
        self._zip = zipfile.ZipFile(path)
        name = key + ".npy"
        if name not in self._zip.namelist():
            self._zip.close()
            raise ValueError(f"{path}: no array {key!r}")
        self._file = self._zip.open(name)
        version = np.lib.format.read_magic(self._file)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise ValueError(f"{path}: array {key!r} has .npy format {version}, not 1.0 or 2.0")
        self.shape, fortran_order, self.dtype = header[version](self._file)
        if self.dtype.hasobject:
            raise ValueError(f"{path}: array {key!r} holds Python objects (never unpickled here)")
        self._whole = None
        if fortran_order:
            with np.load(path, allow_pickle=False) as data:
                self._whole = np.ascontiguousarray(data[key])
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._position = 0

    def read(self, start, stop):
        if self._whole is not None:
            return self._whole[start:stop]
        if start != self._position:
            raise ValueError(f"rows are read in order: asked for {start}, at {self._position}")
        data = self._file.read((stop - start) * self._row_bytes)
        self._position = stop
        return np.frombuffer(data, self.dtype).reshape((stop - start, *self.shape[1:]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()
        self._zip.close()
