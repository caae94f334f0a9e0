"""FID of a published checkpoint with one solver x time grid x NFE, by the standard protocol, sharded and resumable.

`run(config, workdir)` is what `scripts/fid_pretrained.py` calls (config: `experiments/configs/fid_pretrained.py`,
whose docstring has the commands of the DEIS paper's CIFAR-10 table). The protocol:

- The model is `models.pretrained.load(config.checkpoint, ...)`; `num_samples` samples (50,000 by default) are drawn
  with `config.solver` on `config.grid` at `config.nfe` model evaluations (`solver.steps_for_nfe`). Sample k starts
  from the noise of `fold_in(fold_in(PRNGKey(seed), NOISE_STREAM), k)` and a stochastic solver draws its noise from
  `fold_in(fold_in(PRNGKey(seed), SOLVER_STREAM), k)` (one key per sample), so a sample does not depend on the batch,
  device, host or run that draws it. A class-conditional checkpoint gets balanced labels (sample k: class k mod the
  number of classes, the null label left out) and classifier-free guidance of `guidance_scale` (`samplers.guided`,
  one network call on the doubled batch).
- Images are quantised as they would be saved as PNGs: uint8 = round(clip((x + 1) * 127.5, 0, 255)) of the model's
  [-1, 1] output (EDM's `(x * 127.5 + 128).clip(0, 255).to(uint8)` is the same but at exact ties; score_sde's
  `(255 * clip((x + 1) / 2, 0, 1)).astype(uint8)` truncates, half a level darker), and the feature network sees
  uint8 / 127.5 - 1: `feature = "inception"` is the FID Inception-v3 (`experiments.metrics.inception`, pool3, 2048-d,
  weights from `config.fid_weights`); `"random_projection"` is a fixed Gaussian projection of the same inputs, a
  test feature whose Fréchet distance is not FID (results.json says which was used: "metric" and "feature").
- Features are streamed into running float64 statistics (count, sum, sum of outer products), one set per shard of
  `shard_size` consecutive samples, written atomically to WORKDIR/shards/ as each shard finishes; a rerun finds them
  and samples only the missing shards, so a killed run ends with the FID of an uninterrupted one. A finished run
  keeps the sums in WORKDIR/sample_stats.npz and removes its shards (32 MiB each with Inception; `keep_shards`
  keeps them, so that a later run with another num_samples reuses them); rerunning it recomputes only the distance. Shard files carry
  a fingerprint of everything that decides their content (checkpoint hash, solver, options, time grid, seed,
  guidance, feature, shard size, x64); a workdir of another run is refused, not mixed in.
- Devices: every batch is sharded over a mesh of the local devices (`num_devices`, 0 = all) along its `data` axis.
  Hosts: after `jax.distributed.initialize`, shard s is drawn by process s % process_count; each process sums its
  shards and the sums are gathered (`multihost_utils.process_allgather`, float64 bits carried exactly); process 0
  computes the distance and writes the results.
- The reference (`config.reference`): an .npz of `mu` and `sigma` (pytorch-fid's statistics, EDM's fid-refs), an
  .npz of pool3 activations `pool_3` (score_sde's assets/stats/cifar10_stats.npz), an .npz of uint8 NHWC images (key
  `images`, else its first array) or a folder of PNG / JPEG images; images get the run's feature network, and their
  statistics are cached in WORKDIR/reference_stats/. score_sde's activations come from TF-GAN's run of the same
  2015 Inception graph, with TensorFlow's resize instead of PyTorch's bilinear one (ours and pytorch-fid's): close,
  not bit-equal, features; compare FIDs measured against the same reference file.

Outputs in the workdir: shards/shard_NNNNNN.npz while it runs, run.json (the fingerprinted identity), samples.npz
(the first `num_save` uint8 samples, from shard 0) and samples.png, sample_stats.npz (mu, sigma, count of the
samples' features in pytorch-fid's layout, and the sums) and results.json (the value and its provenance; "rows" is
one row for `scripts/make_table.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import time
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fastsamplers import core
from fastsamplers.models import pretrained
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.experiments.metrics import frechet
from fastsamplers.experiments.report.figures import save_samples
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.models.pretrained import diffusers as diffusers_layout

FEATURES = ("inception", "random_projection")
METRICS = {"inception": "fid", "random_projection": "fd_random_projection"}
NOISE_STREAM = 0  # fold_in(root, NOISE_STREAM): the starting noise; sample k from fold_in(that, k)
SOLVER_STREAM = 1  # the noise of stochastic solvers, likewise per sample
PROJECTION_SEED = 0  # the random_projection feature's matrix
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
QUANTISATION = "uint8 = round(clip((x + 1) * 127.5, 0, 255)); features of uint8 / 127.5 - 1"
SHARD_FORMAT = 1
REFERENCE_KINDS = ("an .npz of mu and sigma (pytorch-fid, EDM fid-refs), an .npz of pool_3 activations "
                   "(score_sde), an .npz of uint8 images, or a folder of PNG / JPEG images")


def quantise(x):
    """Model output in [-1, 1] -> uint8 images: round(clip((x + 1) * 127.5, 0, 255)) (ties to even); NaN -> 0.

    >>> import numpy as np
    >>> np.asarray(quantise(np.array([-1.0, -0.999, 0.0, 0.999, 1.0, 7.0, np.nan]))).tolist()
    [0, 0, 128, 255, 255, 255, 0]
    """
    x = jnp.asarray(x)
    x = jnp.where(jnp.isnan(x), -1.0, x)
    return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Features.


@dataclasses.dataclass(frozen=True)
class Feature:
    """A feature network of uint8 images: `params` (an argument of its compiled program), `dim`, and `record` (what
    results.json and the shard fingerprint say about it)."""

    kind: str
    dim: int
    params: Any
    record: dict
    image_shape: tuple | None  # the one image shape it takes (random_projection), None for any


def check_feature(config) -> None:
    """The feature's name and weight file, before anything is loaded."""
    if config.feature not in FEATURES:
        raise ValueError(f"unknown feature {config.feature!r}; valid: {list(FEATURES)}")
    if config.feature == "inception":
        if not config.fid_weights:
            raise ValueError("feature 'inception' needs fid_weights: the .npz that "
                             "scripts/convert_inception_weights.py makes from pytorch-fid's "
                             "pt_inception-2015-12-05-6726825d.pth")
        if not os.path.isfile(config.fid_weights):
            raise FileNotFoundError(f"fid_weights {config.fid_weights!r} not found (convert pytorch-fid's weights "
                                    "with scripts/convert_inception_weights.py; nothing is downloaded)")
    elif config.feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1, got {config.feature_dim}")


def make_feature(config, image_shape) -> Feature:
    """The configured feature network (`check_feature` first); the Inception weights are read here."""
    check_feature(config)
    if config.feature == "inception":
        from fastsamplers.experiments.metrics import inception

        path = os.path.abspath(config.fid_weights)
        params = inception.load_params(path)
        return Feature("inception", inception.FEATURE_DIM, params,
                       {"kind": "inception", "layer": "pool3", "dim": inception.FEATURE_DIM, "weights": path,
                        "weights_sha256": sha256_file(path)}, None)
    size = int(np.prod(image_shape))
    rng = np.random.default_rng(PROJECTION_SEED)
    matrix = (rng.standard_normal((size, config.feature_dim)) / math.sqrt(size)).astype(np.float32)
    return Feature("random_projection", int(config.feature_dim), matrix,
                   {"kind": "random_projection", "dim": int(config.feature_dim), "seed": PROJECTION_SEED,
                    "image_shape": list(image_shape),
                    "note": "a test feature: a fixed Gaussian projection of uint8 / 127.5 - 1; its Frechet distance "
                            "is not FID"}, tuple(image_shape))


def _sharding(mesh, batched):
    return NamedSharding(mesh, PartitionSpec("data") if batched else PartitionSpec())


@functools.lru_cache(maxsize=8)
def _feature_program(kind, mesh):
    """jit(params, uint8 images (n, H, W, C) sharded over `data`) -> features (n, dim) float32, sharded."""

    def extract(params, images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        if kind == "inception":
            from fastsamplers.experiments.metrics import inception

            return inception.InceptionV3().apply(params, x)
        return jnp.dot(x.reshape(x.shape[0], -1), params, precision=jax.lax.Precision.HIGHEST)

    return jax.jit(extract, in_shardings=(_sharding(mesh, False), _sharding(mesh, True)),
                   out_shardings=_sharding(mesh, True))


# ---------------------------------------------------------------------------------------------------------------
# Running statistics.


@dataclasses.dataclass
class Sums:
    """Running float64 sums of features: count, sum (d,), sum of outer products (d, d), and non-finite samples."""

    count: int
    total: np.ndarray
    outer: np.ndarray
    num_nonfinite: int = 0

    @classmethod
    def zeros(cls, dim):
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    def add(self, features):
        f = np.asarray(features, np.float64)
        self.count += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def merge(self, other):
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        self.num_nonfinite += other.num_nonfinite

    def moments(self):
        """(mu, sigma): the mean and the unbiased covariance (pytorch-fid's, numpy's np.cov)."""
        if self.count < 2:
            raise ValueError(f"statistics of {self.count} sample(s): a covariance needs at least 2")
        mean = self.total / self.count
        m2 = self.outer - self.count * np.outer(mean, mean)
        return mean, frechet.FeatureStats(self.count, mean, m2).covariance


def _stream_features(feature, mesh, batch, images_of, num_images, sums):
    """Features of `num_images` uint8 images, `images_of(start, stop)` giving each batch (numpy), added to `sums`;
    the next batch is dispatched before the current one is summed, so the host and the devices overlap."""
    program = _feature_program(feature.kind, mesh)
    pending = None
    for start in range(0, num_images, batch):
        images = images_of(start, min(start + batch, num_images))
        n = images.shape[0]
        if n < batch:
            images = np.concatenate([images, np.zeros((batch - n, *images.shape[1:]), np.uint8)])
        # device_put first: jit refuses host arrays for a sharded argument once jax.distributed is up
        current = (n, program(feature.params, jax.device_put(images, _sharding(mesh, True))))
        if pending is not None:
            sums.add(np.asarray(pending[1])[:pending[0]])
        pending = current
    if pending is not None:
        sums.add(np.asarray(pending[1])[:pending[0]])


# ---------------------------------------------------------------------------------------------------------------
# Reference statistics.


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


def check_reference(path, feature_dim, image_shape, feature_kind) -> Reference:
    """Read enough of the reference to know its kind and check it against the feature and the model's images; every
    failure is a sentence naming the file."""
    if not path:
        raise ValueError(f"config.reference is empty: give {REFERENCE_KINDS}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference {path!r} not found")
    path = os.path.abspath(path)
    if os.path.isdir(path):
        files = tuple(sorted(os.path.join(folder, f) for folder, _, names in os.walk(path) for f in names
                             if f.lower().endswith(IMAGE_EXTENSIONS)))
        if not files:
            raise ValueError(f"reference folder {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        _check_image_shape(_read_image(files[0], image_shape[-1]).shape, image_shape, feature_kind, files[0])
        return Reference(path, "folder", _sha256_files(files, path), files=files, count=len(files),
                         channels=image_shape[-1])
    if not zipfile.is_zipfile(path):
        raise ValueError(f"reference {path!r} is neither a folder nor an .npz; give {REFERENCE_KINDS}")
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.files)
        if "mu" in keys or "sigma" in keys:
            if not {"mu", "sigma"} <= set(keys):
                raise ValueError(f"reference {path!r} has {'mu' if 'mu' in keys else 'sigma'} but not "
                                 f"{'sigma' if 'mu' in keys else 'mu'}: statistics need both (its arrays: {keys})")
            mu, sigma = data["mu"], data["sigma"]
            if mu.shape != (feature_dim,) or sigma.shape != (feature_dim, feature_dim):
                raise ValueError(f"reference {path!r}: mu {mu.shape} and sigma {sigma.shape} do not match the "
                                 f"{feature_kind} feature of dimension {feature_dim}")
            count = int(data["count"]) if "count" in keys else None
            return Reference(path, "stats", sha256_file(path), count=count)
        if "pool_3" in keys:
            shape, _ = npz_array_info(path, "pool_3")
            if len(shape) != 2 or shape[1] != feature_dim or shape[0] < 2:
                raise ValueError(f"reference {path!r}: pool_3 has shape {shape}, expected (n >= 2, {feature_dim}) "
                                 f"activations of the {feature_kind} feature")
            return Reference(path, "activations", sha256_file(path), key="pool_3", count=shape[0])
    key = "images" if "images" in keys else (keys[0] if keys else None)
    shape, dtype = npz_array_info(path, key) if key is not None else ((), None)
    if dtype != np.uint8 or len(shape) != 4:
        got = "no arrays" if key is None else f"{key!r} of dtype {dtype} and shape {shape}"
        raise ValueError(f"reference {path!r} holds neither statistics (mu and sigma) nor activations (pool_3) nor "
                         f"uint8 NHWC images (key 'images' or the first array): it has {got}; its arrays: {keys}")
    if shape[0] < 2:
        raise ValueError(f"reference {path!r}: {shape[0]} image(s); statistics need at least 2")
    _check_image_shape(shape[1:], image_shape, feature_kind, f"{path} [{key}]")
    return Reference(path, "images", sha256_file(path), key=key, count=int(shape[0]))


def _check_image_shape(shape, image_shape, feature_kind, where):
    shape, image_shape = tuple(shape), tuple(image_shape)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise ValueError(f"reference image {where}: shape {shape} is not (H, W, 1 or 3) (NHWC)")
    if feature_kind == "random_projection" and shape != image_shape:
        raise ValueError(f"reference image {where}: shape {shape}, but the random_projection feature takes the "
                         f"model's images {image_shape}")


def _read_image(path, channels):
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB" if channels == 3 else "L"), np.uint8)
    return array[..., None] if array.ndim == 2 else array


def reference_moments(reference, feature, mesh, batch, workdir):
    """(mu, sigma, count, record) of the reference in the feature's space; images are featurised once and their
    statistics cached in WORKDIR/reference_stats/ (keyed by the reference's and the feature's hashes)."""
    record = {"path": reference.path, "kind": reference.kind, "sha256": reference.sha256}
    if reference.kind == "stats":
        with np.load(reference.path, allow_pickle=False) as data:
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        return mu, sigma, reference.count, record
    if reference.kind == "activations":
        with NpzRows(reference.path, "pool_3") as rows:
            sums = Sums.zeros(rows.shape[1])
            for start in range(0, reference.count, 5000):
                sums.add(rows.read(start, min(start + 5000, reference.count)))
        return (*sums.moments(), sums.count, record)
    tag = hashlib.sha256(json.dumps(_identity_feature(feature.record), sort_keys=True).encode()).hexdigest()[:12]
    cache = os.path.join(workdir, "reference_stats", f"{reference.sha256[:16]}_{feature.kind}_{tag}.npz")
    record["cache"] = cache
    if os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as data:
            return np.asarray(data["mu"]), np.asarray(data["sigma"]), int(data["count"]), record
    sums = Sums.zeros(feature.dim)
    if reference.kind == "images":
        with NpzRows(reference.path, reference.key) as rows:  # batch by batch, never the whole array in memory
            _stream_features(feature, mesh, batch, rows.read, reference.count, sums)
    else:
        files = reference.files
        first = _read_image(files[0], reference.channels).shape

        def images_of(start, stop):
            out = [_read_image(f, reference.channels) for f in files[start:stop]]
            for f, image in zip(files[start:stop], out):
                if image.shape != first:
                    raise ValueError(f"reference image {f}: shape {image.shape}, the folder's first image "
                                     f"{files[0]} has {first}; every reference image must have one shape")
            return np.stack(out)

        _stream_features(feature, mesh, batch, images_of, reference.count, sums)
    mu, sigma = sums.moments()
    _write_npz(cache, mu=mu, sigma=sigma, count=np.asarray(sums.count))
    return mu, sigma, sums.count, record


# ---------------------------------------------------------------------------------------------------------------
# Sampling.


@functools.lru_cache(maxsize=8)
def _sample_program(model_fn, solver, process, prediction, image_shape, classes, null_label, guidance_scale, mesh):
    """jit(params, indices (n,) int32 sharded, ts, noise_key, solver_key) -> (uint8 samples, finite (n,) bool).

    Cached on its (hashable) static inputs: one compiled program per model, solver, step count and batch; the
    guided model function is built inside the traced function, so it is traced and compiled once with it."""
    batch_sharding = _sharding(mesh, True)

    def draw(params, indices, ts, noise_key, solver_key):
        keys = jax.vmap(lambda k: jax.random.fold_in(noise_key, k))(indices)
        x = jax.vmap(lambda key: process.prior(key, image_shape, t=ts[0], dtype=jnp.float32))(keys)
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        model, args = model_fn, params
        if classes is not None:
            labels = jnp.asarray(classes, jnp.int32)[indices % len(classes)]
            args = (params, labels)
            if guidance_scale != 1.0:
                model = samplers.guided(model_fn, guidance_scale, (params, jnp.full_like(labels, null_label)),
                                        batch_axes=(None, 0))
        key = jax.vmap(lambda k: jax.random.fold_in(solver_key, k))(indices) if solver.stochastic else None
        x, _ = samplers.sample(model, solver, process, x, ts, prediction=prediction, key=key, args=args,
                               check_finite=False)
        finite = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
        return quantise(x), finite

    replicated = _sharding(mesh, False)
    return jax.jit(draw, in_shardings=(replicated, batch_sharding, replicated, replicated, replicated),
                   out_shardings=(batch_sharding, batch_sharding))


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start


def shards(num_samples, shard_size):
    """The shards of a run: consecutive sample ranges of `shard_size` (the last one shorter)."""
    return [Shard(s, start, min(start + shard_size, num_samples))
            for s, start in enumerate(range(0, num_samples, shard_size))]


def shard_path(workdir, shard):
    return os.path.join(workdir, "shards", f"shard_{shard.index:06d}.npz")


def write_shard(path, shard, sums, fingerprint):
    """The shard's statistics, atomically (a temporary file, then os.replace)."""
    _write_npz(path, format=np.asarray(SHARD_FORMAT), fingerprint=np.asarray(fingerprint),
               start=np.asarray(shard.start), stop=np.asarray(shard.stop), count=np.asarray(sums.count),
               sum=sums.total, outer=sums.outer, num_nonfinite=np.asarray(sums.num_nonfinite))


def read_shard(path, shard, fingerprint, workdir, identity):
    """The saved `Sums` of a shard, or None when it is still to be sampled (absent, or the last shard of a run with
    fewer samples); ValueError for a shard of another run."""
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        if str(data["fingerprint"]) != fingerprint:
            raise ValueError(f"{path} holds statistics of another run ({_differences(workdir, identity)}); use "
                             "another workdir, or remove its shards/ folder to start over")
        if (int(data["start"]), int(data["stop"])) != (shard.start, shard.stop):
            return None  # the same run with another num_samples: this shard is sampled again, whole
        return Sums(int(data["count"]), np.array(data["sum"]), np.array(data["outer"]), int(data["num_nonfinite"]))


def write_final(workdir, total, fingerprint):
    """WORKDIR/sample_stats.npz: mu, sigma and count (pytorch-fid's layout, for other tools) and the exact sums with
    the run's fingerprint, so that a finished run needs no shard files to be scored again."""
    mu, sigma = total.moments()
    _write_npz(os.path.join(workdir, "sample_stats.npz"), mu=mu, sigma=sigma, count=np.asarray(total.count),
               sum=total.total, outer=total.outer, num_nonfinite=np.asarray(total.num_nonfinite),
               fingerprint=np.asarray(fingerprint), format=np.asarray(SHARD_FORMAT))


def read_final(workdir, plan, num_samples):
    """The `Sums` of a finished run of this plan with num_samples samples, or None; ValueError for another run's."""
    path = os.path.join(workdir, "sample_stats.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        if "fingerprint" not in data.files:
            return None
        if str(data["fingerprint"]) != plan.fingerprint:
            raise ValueError(f"{path} holds statistics of another run ({_differences(workdir, plan.identity)}); use "
                             "another workdir, or remove it and shards/ to start over")
        if int(data["count"]) != num_samples:
            return None  # the same run with another num_samples: sampled again (from the shards that are kept)
        return Sums(int(data["count"]), np.array(data["sum"]), np.array(data["outer"]), int(data["num_nonfinite"]))


def _differences(workdir, identity):
    try:
        with open(os.path.join(workdir, "run.json")) as f:
            saved = json.load(f)["identity"]
    except (OSError, ValueError, KeyError):
        return "a different fingerprint"
    keys = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    return "it differs in " + ", ".join(keys) if keys else "a different fingerprint"


def _sample_shard(shard, plan, bar, save_to=None):
    """Sample one shard in batches and return its `Sums`; the first `plan.num_save` uint8 samples of shard 0 are
    written to `save_to` (a workdir)."""
    program = _sample_program(plan.model.model_fn, plan.solver, plan.model.process, plan.model.prediction,
                              tuple(plan.model.image_shape), plan.classes, plan.null_label, plan.guidance_scale,
                              plan.mesh)
    extract = _feature_program(plan.feature.kind, plan.mesh)
    sums = Sums.zeros(plan.feature.dim)
    kept = []

    def consume(start, images, finite, features):
        n = min(plan.batch, shard.stop - start)
        finite = np.asarray(finite)[:n]
        if not finite.all():
            if not plan.allow_nonfinite:
                raise FloatingPointError(
                    f"shard {shard.index}: {int((~finite).sum())} of samples {start}..{start + n} are not finite "
                    f"({plan.solver.name} at NFE {plan.nfe} on the {plan.grid} grid diverged); set "
                    "allow_nonfinite=True to quantise them (NaN -> 0) and count them instead")
            sums.num_nonfinite += int((~finite).sum())
        sums.add(np.asarray(features)[:n])
        if save_to is not None and start < plan.num_save:
            kept.append(np.asarray(images)[:min(n, plan.num_save - start)])
        bar.update(n)

    pending = None
    for start in range(shard.start, shard.stop, plan.batch):
        indices = np.arange(start, start + plan.batch, dtype=np.int32)  # rows past shard.stop: computed, dropped
        indices = jax.device_put(indices, _sharding(plan.mesh, True))
        images, finite = program(plan.params, indices, plan.ts, plan.noise_key, plan.solver_key)
        current = (start, images, finite, extract(plan.feature.params, images))
        if pending is not None:
            consume(*pending)
        pending = current
    consume(*pending)
    if kept:
        images = np.concatenate(kept)
        _write_npz(os.path.join(save_to, "samples.npz"), images=images)
        save_samples(images.astype(np.float32) / 127.5 - 1.0, os.path.join(save_to, "samples.png"))
    return sums


# ---------------------------------------------------------------------------------------------------------------
# The plan: everything checked and built before any sampling.


@dataclasses.dataclass(frozen=True)
class Plan:
    model: Any  # models.pretrained.Pretrained
    checkpoint: dict  # path, layout, load options, files and their SHA-256
    solver: Any
    label: str
    grid: str
    ts: Any  # the grid, replicated on the mesh
    ts_list: list
    num_steps: int
    nfe: int  # model evaluations per sample
    classes: tuple | None  # the labels balanced over (class-conditional checkpoints)
    null_label: int | None
    guidance_scale: float
    feature: Feature
    reference: Reference
    mesh: Mesh
    batch: int  # samples per device call, a multiple of the devices
    params: Any  # the model's weights, replicated on the mesh
    noise_key: Any
    solver_key: Any
    allow_nonfinite: bool
    num_save: int
    identity: dict  # what decides a shard's content
    fingerprint: str


def _check_config(config):
    if isinstance(config.num_samples, bool) or not isinstance(config.num_samples, int) or config.num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (a covariance needs two samples), got "
                         f"{config.num_samples!r}")
    for name in ("batch_size", "shard_size"):
        if config[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {config[name]}")
    if config.num_devices < 0:
        raise ValueError(f"num_devices must be >= 0 (0 = all local devices), got {config.num_devices}")
    if not math.isfinite(config.guidance_scale):
        raise ValueError(f"guidance_scale must be finite, got {config.guidance_scale}")
    if not config.checkpoint:
        raise ValueError("config.checkpoint is empty: give a diffusers folder or a score_sde checkpoint_N file")
    if not os.path.exists(config.checkpoint):
        raise FileNotFoundError(f"checkpoint {config.checkpoint!r} not found")
    if config.layout and config.layout not in pretrained.LAYOUTS:
        raise ValueError(f"unknown layout {config.layout!r}; valid: {list(pretrained.LAYOUTS)} (or '' to detect)")
    if not config.grid.startswith("file:"):
        schedules.GRIDS.lookup(config.grid)  # "unknown grid ...; valid names: [...]"


def _load_options(config, layout):
    """The keywords of models.pretrained.load for the layout; a set option of the other layout is an error."""
    diffusers_options = {"scheduler_config": config.scheduler_config or None, "variant": config.variant or None,
                         "null_label": config.null_label}
    score_sde_options = {"config": config.model_config or None,
                         "params": None if config.params == "params_ema" else config.params}
    ours, theirs, their_names = ((diffusers_options, score_sde_options, ("model_config", "params"))
                                 if layout == "diffusers" else
                                 (score_sde_options, diffusers_options, ("scheduler_config", "variant", "null_label")))
    wrong = [name for name, value in zip(their_names, theirs.values()) if value is not None]
    if wrong:
        raise ValueError(f"{config.checkpoint} is a {layout} checkpoint: the option(s) {wrong} are for the other "
                         f"layout ({list(pretrained.LAYOUTS)})")
    return {k: v for k, v in ours.items() if v is not None}


def _checkpoint_files(model, config, layout, options):
    if layout == "diffusers":
        files = list(diffusers_layout.find_files(config.checkpoint, options.get("variant"),
                                                 options.get("scheduler_config")))
    else:
        files = [model.source] + ([config.model_config] if os.path.isfile(config.model_config) else [])
    return {os.path.abspath(f): sha256_file(f) for f in files}


def _timesteps(config, process, num_steps):
    ends = {k: config[k] for k in ("t_min", "t_max") if config[k] is not None}
    if config.grid.startswith("file:"):
        path = config.grid[len("file:"):].format(nfe=config.nfe, num_steps=num_steps)
        return np.asarray(schedules.get_timesteps("file", process, num_steps, path=path))
    return np.asarray(schedules.get_timesteps(config.grid, process, num_steps, **ends))


def make_plan(config, workdir) -> Plan:
    """Check every input and build the run: names, NFE, files and the reference before the checkpoint is loaded
    where that is possible, and everything before the first sample."""
    _check_config(config)
    options = config.solver_options.to_dict() if isinstance(config.solver_options, ml_collections.ConfigDict) \
        else dict(config.solver_options)
    solver = samplers.get_solver(config.solver, **options)
    if not solver.static_nfe:
        raise ValueError(f"solver {config.solver!r} is adaptive: it has no NFE budget; pick a fixed-step solver")
    num_steps = solver.steps_for_nfe(config.nfe)
    solver.check_grid(num_steps)
    if config.grid.startswith("file:"):
        path = config.grid[len("file:"):].format(nfe=config.nfe, num_steps=num_steps)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"schedule file {path!r} not found (grid {config.grid!r})")
    check_feature(config)
    if not config.reference:
        raise ValueError(f"config.reference is empty: give {REFERENCE_KINDS}")
    if not os.path.exists(config.reference):
        raise FileNotFoundError(f"reference {config.reference!r} not found")

    layout = config.layout or pretrained.detect_layout(config.checkpoint)
    load_options = _load_options(config, layout)
    model = pretrained.load(config.checkpoint, layout=layout, **load_options)
    if model.num_classes is None:
        if config.guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={config.guidance_scale} needs a class-conditional checkpoint; "
                             f"{config.checkpoint} is unconditional (use guidance_scale=1)")
        classes = None
    else:
        if config.guidance_scale != 1.0 and model.null_label is None:
            raise ValueError(f"guidance_scale={config.guidance_scale}: {config.checkpoint} is class-conditional "
                             f"({model.num_classes} labels) but has no null label for the unconditional call; set "
                             "null_label=... (the label its training used for 'no class')")
        classes = tuple(c for c in range(model.num_classes) if c != model.null_label)
    ts = _timesteps(config, model.process, num_steps)
    feature = make_feature(config, model.image_shape)
    reference = check_reference(config.reference, feature.dim, model.image_shape, feature.kind)

    devices = jax.local_devices()
    num_devices = config.num_devices or len(devices)
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but this process sees {len(devices)} local devices")
    mesh = Mesh(np.array(devices[:num_devices]), ("data",))
    batch = -(-config.batch_size // num_devices) * num_devices
    replicated = _sharding(mesh, False)
    root = jax.random.PRNGKey(config.seed)
    checkpoint = {"path": os.path.abspath(config.checkpoint), "layout": layout, "load_options": load_options,
                  "files": _checkpoint_files(model, config, layout, load_options)}
    checkpoint["sha256"] = hashlib.sha256("".join(f"{h}\n" for h in checkpoint["files"].values()).encode()).hexdigest()
    identity = {"checkpoint_sha256": checkpoint["sha256"], "layout": layout,
                "load_options": {k: v for k, v in load_options.items() if k != "scheduler_config"},
                "process": model.process.name, "prediction": model.prediction, "solver": config.solver,
                "solver_options": options, "grid": config.grid, "ts": [float(t) for t in ts],
                "nfe": solver.nfe(num_steps), "seed": config.seed, "guidance_scale": float(config.guidance_scale),
                "classes": classes, "null_label": model.null_label, "feature": _identity_feature(feature.record),
                "shard_size": config.shard_size, "quantisation": QUANTISATION,
                "x64": bool(jax.config.jax_enable_x64), "shard_format": SHARD_FORMAT}
    identity = json.loads(json.dumps(identity))  # as run.json holds it (tuples as lists), for comparisons
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Plan(model=model, checkpoint=checkpoint, solver=solver,
                label=config.label or _solver_label(config.solver, options), grid=config.grid,
                ts=jax.device_put(jnp.asarray(ts), replicated), ts_list=[float(t) for t in ts], num_steps=num_steps,
                nfe=solver.nfe(num_steps), classes=classes, null_label=model.null_label,
                guidance_scale=float(config.guidance_scale),
                feature=dataclasses.replace(feature, params=jax.device_put(feature.params, replicated)),
                reference=reference, mesh=mesh, batch=batch, params=jax.device_put(model.params, replicated),
                noise_key=jax.device_put(jax.random.fold_in(root, NOISE_STREAM), replicated),
                solver_key=jax.device_put(jax.random.fold_in(root, SOLVER_STREAM), replicated),
                allow_nonfinite=bool(config.allow_nonfinite), num_save=int(config.num_save), identity=identity,
                fingerprint=fingerprint)


def _solver_label(name, options):
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def _identity_feature(record):
    """The feature's record without its file path (moving the weights changes nothing)."""
    return {k: v for k, v in record.items() if k != "weights"}


# ---------------------------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample, featurise and score one solver x grid x NFE cell of a published checkpoint; resumes from WORKDIR.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/fid_pretrained.py`.
      workdir: a directory (created if missing) for the shards and results (see the module docstring).

    Returns:
      The content of results.json on process 0 (the other processes of a multi-host run return None): "metric"
      ("fid", or "fd_random_projection" for the test feature) and "value"; "num_samples", "num_nonfinite";
      "checkpoint" (path, layout, load options, SHA-256 of each file and of all), "model", "solver", "grid", "ts",
      "nfe" (budget, steps, per sample: info["nfe"], and network calls per sample), "guidance", "seeds", "feature",
      "reference" (path, kind, SHA-256, count), "quantisation", "sharding", "resumed_shards", "reused_final_statistics" (a finished run scored again), "sampled_this_run",
      "wall_s", "sampling_s" and "samples_per_s" (this run's samples over its sampling time, compiling included),
      "fingerprint", "versions", "config", and "rows" (one row for scripts/make_table.py) with "description".

    Raises:
      ValueError, FileNotFoundError: a bad name, NFE, file, reference or option, before any sampling.
      FloatingPointError: a non-finite sample (unless allow_nonfinite).
    """
    from tqdm import tqdm

    start_time = time.perf_counter()
    plan = make_plan(config, workdir)
    process, process_count = jax.process_index(), jax.process_count()
    os.makedirs(os.path.join(workdir, "shards"), exist_ok=True)
    all_shards = shards(config.num_samples, config.shard_size)
    owned = [s for s in all_shards if s.index % process_count == process]
    final = read_final(workdir, plan, config.num_samples) if process == 0 else None
    complete = _broadcast_flag(final is not None)  # a finished run: nothing to sample, on any process
    done = {} if complete else {
        s.index: read_shard(shard_path(workdir, s), s, plan.fingerprint, workdir, plan.identity) for s in owned}
    done = {k: v for k, v in done.items() if v is not None}
    if process == 0:
        core.write_json(os.path.join(workdir, "run.json"), {"identity": plan.identity, "fingerprint": plan.fingerprint},
                        indent=2)
        # The reference before the samples: a bad image folder fails now, not after hours of sampling.
        ref_mu, ref_sigma, ref_count, ref_record = reference_moments(plan.reference, plan.feature, plan.mesh,
                                                                     plan.batch, workdir)

    resumed = len(all_shards) if complete else len(done)
    todo = [] if complete else [s for s in owned if s.index not in done]
    bar = tqdm(total=sum(s.size for s in owned), initial=sum(s.size for s in owned if s not in todo),
               unit="sample", desc=f"{plan.label} {plan.grid} NFE {plan.nfe}", disable=process != 0,
               mininterval=1.0, dynamic_ncols=True)
    sampling_start = time.perf_counter()
    sampled = 0
    for shard in todo:
        sums = _sample_shard(shard, plan, bar, save_to=workdir if shard.index == 0 and plan.num_save > 0 else None)
        write_shard(shard_path(workdir, shard), shard, sums, plan.fingerprint)
        done[shard.index] = sums
        sampled += shard.size
    bar.close()
    sampling_s = time.perf_counter() - sampling_start

    if complete:
        total = final
    else:
        total = Sums.zeros(plan.feature.dim)
        for index in sorted(done):  # a fixed order: the sums do not depend on which run computed which shard
            total.merge(done[index])
        total, sampled, resumed = _sum_over_processes(total, sampled, resumed)
    results = None
    if process == 0:
        if total.count != config.num_samples:
            raise RuntimeError(f"the shards hold {total.count} samples, expected {config.num_samples}")
        mu, sigma = total.moments()
        if not complete:
            write_final(workdir, total, plan.fingerprint)
        value = frechet.frechet_distance_from_moments(mu, sigma, ref_mu, ref_sigma)
        if not math.isfinite(value):
            raise FloatingPointError(f"the Fréchet distance is {value}; stopping")
        results = _results(config, plan, value, total, dict(ref_record, count=ref_count), resumed, sampled,
                           sampling_s, time.perf_counter() - start_time, process_count)
        results["reused_final_statistics"] = complete
        core.write_json(os.path.join(workdir, "results.json"), results, indent=2)
        results = json.loads(json.dumps(results, default=core.atomic.jsonable))  # what the file holds
        name = "FID" if plan.feature.kind == "inception" else "FD (random_projection features, not FID)"
        print(f"{name} {value:.4f}: {total.count} samples, {plan.label}, {plan.grid} grid, NFE {plan.nfe}"
              + (f", guidance {plan.guidance_scale:g}" if plan.guidance_scale != 1.0 else "")
              + (f", {total.num_nonfinite} non-finite" if total.num_nonfinite else "")
              + f" -> {os.path.join(workdir, 'results.json')}", flush=True)
    if not complete and not config.keep_shards:
        if process_count > 1:  # the shards go only once process 0 holds the final statistics
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fid_protocol: final statistics written")
        for shard in owned:
            if os.path.isfile(shard_path(workdir, shard)):
                os.remove(shard_path(workdir, shard))
    return results


def _broadcast_flag(flag):
    """Process 0's boolean on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def _sum_over_processes(sums, sampled, resumed):
    """(sums, samples drawn now, shards resumed) over every process: process_allgather of their float64 bits as
    uint32 (exact with or without x64), summed in process order."""
    if jax.process_count() == 1:
        return sums, sampled, resumed
    from jax.experimental import multihost_utils

    dim = sums.total.shape[0]
    head = [sums.count, sums.num_nonfinite, sampled, resumed]
    packed = np.concatenate([np.asarray(head, np.float64), sums.total, sums.outer.ravel()])
    gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
    rows = np.ascontiguousarray(gathered).view(np.float64).reshape(jax.process_count(), packed.size)
    out = Sums.zeros(dim)
    k = len(head)
    for row in rows:
        out.merge(Sums(int(row[0]), row[k:k + dim].copy(), row[k + dim:].reshape(dim, dim).copy(), int(row[1])))
    return out, int(rows[:, 2].sum()), int(rows[:, 3].sum())


def _results(config, plan, value, total, reference, resumed, sampled, sampling_s, wall_s, process_count):
    metric = METRICS[plan.feature.kind]
    network_calls = plan.nfe * (2 if plan.guidance_scale != 1.0 else 1)
    row = {"label": plan.label, "solver": config.solver, "options": plan.identity["solver_options"],
           "grid": plan.grid, "nfe_budget": int(config.nfe), "num_steps": plan.num_steps, "nfe": plan.nfe,
           "metric": metric, "value": value, "num_samples": total.count, "num_nonfinite": total.num_nonfinite,
           "seconds": wall_s}
    model = plan.model
    return {
        "metric": metric,
        "value": value,
        "num_samples": total.count,
        "num_nonfinite": total.num_nonfinite,
        "checkpoint": plan.checkpoint,
        "model": {"process": model.process.name, "prediction": model.prediction,
                  "image_shape": list(model.image_shape), "num_classes": model.num_classes,
                  "null_label": model.null_label},
        "solver": {"name": config.solver, "options": plan.identity["solver_options"], "label": plan.label,
                   "order": getattr(plan.solver, "order", None), "stochastic": plan.solver.stochastic},
        "grid": {"name": plan.grid, "t_min": config.t_min, "t_max": config.t_max},
        "ts": plan.ts_list,
        "nfe": {"budget": int(config.nfe), "num_steps": plan.num_steps, "per_sample": plan.nfe,
                "network_calls_per_sample": network_calls},
        "guidance": {"scale": plan.guidance_scale, "null_label": plan.null_label,
                     "labels": None if plan.classes is None else "sample k: classes[k % len(classes)]",
                     "classes": plan.classes},
        "seeds": {"seed": config.seed,
                  "noise": f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {NOISE_STREAM}), k)",
                  "solver": (f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {SOLVER_STREAM}), k)"
                             if plan.solver.stochastic else None)},
        "feature": plan.feature.record,
        "reference": reference,
        "quantisation": QUANTISATION,
        "sharding": {"processes": process_count, "devices_per_process": int(plan.mesh.devices.size),
                     "device_batch": plan.batch, "shard_size": config.shard_size,
                     "num_shards": len(shards(config.num_samples, config.shard_size))},
        "resumed_shards": resumed,
        "sampled_this_run": sampled,
        "wall_s": wall_s,
        "sampling_s": sampling_s,
        "samples_per_s": sampled / sampling_s if sampled and sampling_s > 0 else None,
        "fingerprint": plan.fingerprint,
        "versions": versions(),
        "config": config.to_dict(),
        "description": f"{os.path.basename(os.path.normpath(plan.checkpoint['path']))}: "
                       f"{'FID' if metric == 'fid' else metric}, {total.count} samples"
                       + (f", guidance {plan.guidance_scale:g}" if plan.guidance_scale != 1.0 else ""),
        "rows": [row],
    }


# ---------------------------------------------------------------------------------------------------------------
# Files.


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _sha256_files(files, root):
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{os.path.relpath(f, root)}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


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


def _write_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    core.write_atomic(path, buffer.getvalue())
