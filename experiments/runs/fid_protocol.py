"""FID of a model with one solver x time grid x NFE, by the standard protocol, sharded and resumable.

`run(config, workdir)` is what `scripts/fid_pretrained.py` calls (config: `experiments/configs/fid_pretrained.py`,
whose docstring has the commands of the DEIS paper's CIFAR-10 table). This module is the plan; the scoring is the
evaluation layer's (`experiments.metrics`: `features`, `references`, `frechet`), the same call that scores a cell of
`sampler_tables`, so the same samples give the same number in both. The protocol:

- The model comes from `config.source` (`experiments.runs.sources`; "pretrained": `models.pretrained.load` of
  `config.checkpoint`). `num_samples` samples (50,000 by default) are drawn with `config.solver` on `config.grid` at
  `config.nfe` model evaluations (`solver.steps_for_nfe`). Sample k starts from the noise of
  `fold_in(fold_in(PRNGKey(seed), NOISE_STREAM), k)` and a stochastic solver draws its noise from
  `fold_in(fold_in(PRNGKey(seed), SOLVER_STREAM), k)` (one key per sample), so a sample does not depend on the batch,
  device, host or run that draws it. A class-conditional model gets balanced labels (sample k: class k mod the number
  of classes, the null label left out) and classifier-free guidance of `guidance_scale` (`samplers.guided`, one
  network call on the doubled batch). With `config.classifier` (a converted noisy classifier) the model is guided
  by it at `classifier_scale` (`samplers.classifier_guided`: the gradient of log p(y | x_t) by `jax.grad` in the
  compiled loop), the labels balanced over the classifier's classes.
- The feature (`config.feature`, `features.FEATURES`): "inception" is FID (pool3 of the FID Inception-v3, weights
  from `config.fid_weights`), seeing the samples quantised to uint8 as PNGs would hold them; "random_projection" is
  a test feature whose Fréchet distance is not FID (results.json says which was used: "metric" and "feature").
- Samples holding NaN or Inf stop the run (FloatingPointError), or with `allow_nonfinite` are counted and left out
  (`FeatureStats`' policy) and reported in "num_nonfinite".
- Features are streamed into float64 statistics (`FeatureStats`), one set per shard of `shard_size` consecutive
  samples, kept as each shard finishes in WORKDIR/shards/, a `core.ShardStore` stamped with the fingerprint of
  everything that decides the samples (source, solver, options, time grid, seed, guidance, feature, shard size, x64);
  a rerun samples only the missing shards, so a killed run ends with the FID of an uninterrupted one, and a workdir
  of another run is refused, not mixed in. A finished run keeps the merged statistics in WORKDIR/sample_stats.npz
  and removes its shards (32 MiB each with Inception; `keep_shards` keeps them, so that a later run with another
  num_samples reuses them); rerunning it recomputes only the distance.
- Devices: every batch is sharded over a mesh of the local devices (`num_devices`, 0 = all) along its `data` axis.
  Hosts: after `jax.distributed.initialize`, shard s is drawn by process s % process_count; each process merges its
  shards and the statistics are gathered (`multihost_utils.process_allgather`, float64 bits carried exactly);
  process 0 computes the distance and writes the results.
- The reference (`config.reference`): any file of `references.KINDS`; images are featurised with the run's feature
  and their statistics cached in WORKDIR/reference_stats/.

Outputs in the workdir: shards/shard_NNNNNN.npz while it runs, run.json (the fingerprinted identity), samples.npz
(the first `num_save` uint8 samples, from shard 0) and samples.png, sample_stats.npz (mu, sigma and count of the
finite samples' features in pytorch-fid's layout, and the exact statistics) and results.json (the value and its
provenance; "rows" is one row for `scripts/make_table.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from fastsamplers import core
from fastsamplers import samplers
from fastsamplers import schedules
from fastsamplers.schedules.files import read_learned
from fastsamplers.experiments.configs import grid_file, grid_timesteps
from fastsamplers.experiments.metrics import features, references
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_score
from fastsamplers.experiments.report.figures import save_samples
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.experiments.runs import sources
from fastsamplers.samplers.pytrees import merge, split

NOISE_STREAM = 0  # fold_in(root, NOISE_STREAM): the starting noise; sample k from fold_in(that, k)
SOLVER_STREAM = 1  # the noise of stochastic solvers, likewise per sample
SHARD_FORMAT = 2  # 2: FeatureStats (count, mean, m2) in core.ShardStore entries
FINAL = "sample_stats.npz"


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start

    @property
    def name(self):
        return f"shard_{self.index:06d}.npz"


def shards(num_samples, shard_size):
    """The shards of a run: consecutive sample ranges of `shard_size` (the last one shorter)."""
    return [Shard(s, start, min(start + shard_size, num_samples))
            for s, start in enumerate(range(0, num_samples, shard_size))]


@dataclasses.dataclass(frozen=True)
class Plan:
    source: sources.Source
    solver: Any
    label: str
    grid: str
    ts: Any  # the grid, replicated on the mesh
    num_steps: int
    nfe: int  # model evaluations per sample
    guidance_scale: float
    classifier_scale: float  # classifier guidance (`samplers.classifier_guided`), with source.classifier
    feature: features.Feature  # its params replicated on the mesh
    reference: references.Reference
    mesh: Mesh
    batch: int  # samples per device call, a multiple of the devices
    params: Any  # the model's weights, replicated on the mesh
    classifier_params: Any  # the classifier's weights, replicated (None without one)
    decode_params: Any  # a latent model's VAE weights, replicated (None for a pixel model)
    noise_key: Any
    solver_key: Any
    identity: dict  # what decides a shard's content
    shards: core.ShardStore  # WORKDIR/shards
    final: core.ShardStore  # WORKDIR (sample_stats.npz)


def _refusal(remedy):
    def refuse(path, differences, stored, expected):
        differs = "it differs in " + ", ".join(differences) if differences else "a different fingerprint"
        return f"{path} holds statistics of another run ({differs}); use another workdir, or {remedy}"

    return refuse


def _check_config(config):
    if isinstance(config.num_samples, bool) or not isinstance(config.num_samples, int) or config.num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (a covariance needs two samples), got "
                         f"{config.num_samples!r}")
    for name in ("batch_size", "shard_size"):
        if config[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {config[name]}")
    if config.num_devices < 0:
        raise ValueError(f"num_devices must be >= 0 (0 = all local devices), got {config.num_devices}")
    for name in ("guidance_scale", "classifier_scale"):
        if not math.isfinite(config[name]):
            raise ValueError(f"{name} must be finite, got {config[name]}")
    if not config.grid.startswith("file:"):
        options = {k: v for k, v in config.grid_options.to_dict().items() if k != "append_zero"}  # get_timesteps'
        schedules.GRIDS.check_options(config.grid, options)  # unknown grid or option


def make_plan(config, workdir) -> Plan:
    """Check every input and build the run: names, NFE, files and the reference before the model is loaded where
    that is possible, and everything before the first sample."""
    _check_config(config)
    options = config.solver_options.to_dict() if isinstance(config.solver_options, ml_collections.ConfigDict) \
        else dict(config.solver_options)
    solver = samplers.get_solver(config.solver, **options)
    if not solver.static_nfe:
        raise ValueError(f"solver {config.solver!r} is adaptive: it has no NFE budget; pick a fixed-step solver")
    learned = None
    if config.solver in samplers.FILE_SOLVERS:  # a learned sampler runs on the grid saved with it
        learned_ts, learned = read_learned(options["path"])
        num_steps = learned_ts.shape[0] - 1
        if solver.nfe(num_steps) != config.nfe:
            raise ValueError(f"{options['path']}: a learned sampler of {solver.nfe(num_steps)} model calls, but "
                             f"nfe={config.nfe}; set nfe={solver.nfe(num_steps)}")
    else:
        num_steps = solver.steps_for_nfe(config.nfe)
    solver.check_grid(num_steps)
    grid_file(config.grid, config.nfe, num_steps)
    feature_spec = features.from_config(config)
    if not config.reference:
        raise ValueError(f"config.reference is empty: give {references.KINDS}")
    if not os.path.exists(config.reference):
        raise FileNotFoundError(f"reference {config.reference!r} not found")

    source = sources.load(config)
    if solver.learned_variance:
        source = _with_learned_variance(source, config.solver)
    target = source.target
    if config.guidance_scale != 1.0:
        if source.classes is None:
            raise ValueError(f"guidance_scale={config.guidance_scale} needs a class-conditional checkpoint; "
                             f"{target.description} is unconditional (use guidance_scale=1)")
        if source.null_label is None:
            raise ValueError(f"guidance_scale={config.guidance_scale}: {target.description} is class-conditional "
                             f"({target.num_classes} labels) but has no null label for the unconditional call; set "
                             "null_label=... (the label its training used for 'no class')")
    if learned is not None and learned["process"] != target.process.name:
        raise ValueError(f"{options['path']} was learned on process {learned['process']!r}; {target.description} "
                         f"is sampled on {target.process.name!r}")
    ts = np.asarray(learned_ts) if learned is not None else grid_timesteps(
        config.grid, target.process, num_steps, config.nfe, config.t_min, config.t_max, config.grid_options.to_dict())
    if source.decode is None and source.images != tuple(target.shape):
        raise ValueError(f"{config.checkpoint} samples latents {tuple(target.shape)} and has no VAE to decode them "
                         "into images: give its folder a vae/ (scripts/convert_checkpoint.py --vae FOLDER)")
    feature = feature_spec.build(source.images)
    reference = references.check(config.reference, feature, source.images)

    devices = jax.local_devices()
    num_devices = config.num_devices or len(devices)
    if num_devices > len(devices):
        raise ValueError(f"num_devices={num_devices} but this process sees {len(devices)} local devices")
    mesh = Mesh(np.array(devices[:num_devices]), ("data",))
    replicated = features.sharding(mesh, False)
    root = jax.random.PRNGKey(config.seed)
    identity = {**source.identity, "process": target.process.name, "prediction": target.prediction,
                "solver": config.solver, "solver_options": options, "grid": config.grid, "ts": ts.tolist(),
                "nfe": solver.nfe(num_steps), "seed": config.seed, "guidance_scale": float(config.guidance_scale),
                "classes": source.classes, "null_label": source.null_label, "feature": feature.identity(),
                "classifier_scale": float(config.classifier_scale) if source.classifier else None,
                "shard_size": config.shard_size, "x64": bool(jax.config.jax_enable_x64), "shard_format": SHARD_FORMAT}
    return Plan(source=source, solver=solver, label=config.label or _solver_label(config.solver, options),
                grid=config.grid, ts=jax.device_put(jnp.asarray(ts), replicated), num_steps=num_steps,
                nfe=solver.nfe(num_steps), guidance_scale=float(config.guidance_scale),
                classifier_scale=float(config.classifier_scale),
                feature=dataclasses.replace(feature, params=jax.device_put(feature.params, replicated)),
                reference=reference, mesh=mesh, batch=-(-config.batch_size // num_devices) * num_devices,
                params=jax.device_put(target.args, replicated),
                classifier_params=None if source.classifier is None else jax.device_put(source.classifier.params,
                                                                                        replicated),
                decode_params=None if source.decode is None else jax.device_put(source.decode_params, replicated),
                noise_key=jax.device_put(jax.random.fold_in(root, NOISE_STREAM), replicated),
                solver_key=jax.device_put(jax.random.fold_in(root, SOLVER_STREAM), replicated), identity=identity,
                shards=core.ShardStore(os.path.join(workdir, "shards"), identity,
                                       refuse=_refusal("remove its shards/ folder to start over")),
                final=core.ShardStore(workdir, identity, refuse=_refusal("remove it and shards/ to start over")))


def _with_learned_variance(source, solver_name):
    """The source sampled through its [eps | v] output, for a solver with a learned variance; its guidance guides the
    eps channels as published (all, or the layout's mask) and takes v from the conditional call, as DiT's
    forward_with_cfg does (DiT/models.py:257-262)."""
    if source.variance_model_fn is None:
        raise ValueError(f"solver {solver_name!r} with variance='learned' needs a checkpoint with a learned variance "
                         f"(guided-diffusion's or DiT's learn_sigma); {source.target.description} has none: use "
                         "variance='small' or 'large'")
    if source.classifier is not None:
        raise NotImplementedError(
            "classifier guidance of the ancestral sampler with the learned variance: guided-diffusion shifts its "
            "posterior mean by the variance times the gradient (condition_mean), which is not built here; "
            "classifier_guided's score form runs with variance='small' or 'large' and with the ODE solvers")
    target = copy.copy(source.target)
    target.model_fn = source.variance_model_fn
    channels = target.shape[-1]
    mask = (source.guidance_mask or (True,) * channels) + (False,) * channels
    return dataclasses.replace(source, target=target, guidance_mask=mask)


def _solver_label(name, options):
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


# ---------------------------------------------------------------------------------------------------------------
# Sampling and scoring one shard.


@functools.lru_cache(maxsize=8)
def _sample_program(model_structure, solver_structure, process, prediction, image_shape, classes, null_label, guided,
                    conditional, classifier_fn, decode, guidance_mask, mesh):
    """jit(params, indices (n,) int32 sharded, ts, noise_key, solver_key, model leaves, solver leaves, guidance
    scale, classifier params, classifier scale, decoder params) -> float32 samples (n, *image_shape).

    Cached on its static inputs, the structures of the model function and the solver (`samplers.pytrees.split`) and
    whether the model is guided: one compiled program per model, solver structure, step count and batch, whatever
    the guidance scale or the solver's numeric options (eta, tau, ...), which are traced arguments, as in
    `samplers.sample`. The guided model function is built inside the traced function, so it is traced and compiled
    once with it. `conditional`: the model takes labels (an unconditional one guided by a classifier does not);
    `classifier_fn`: a noisy classifier's function for classifier guidance, or None; `decode`: a latent model's VAE
    decoder decode(params, z) (the samples are decoded in the program, its weights a traced argument: `image_shape`
    is then the latents'), or None; `guidance_mask`:
    the channels classifier-free guidance guides (None: all)."""
    batch_sharding = features.sharding(mesh, True)

    def draw(params, indices, ts, noise_key, solver_key, model_leaves, solver_leaves, scale, classifier_params,
             classifier_scale, decode_params):
        model_fn, solver = merge(model_structure, model_leaves), merge(solver_structure, solver_leaves)
        keys = jax.vmap(lambda k: jax.random.fold_in(noise_key, k))(indices)
        x = jax.vmap(lambda key: process.prior(key, image_shape, t=ts[0], dtype=jnp.float32))(keys)
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
        model, args = model_fn, params
        if classes is not None:
            labels = jnp.asarray(classes, jnp.int32)[indices % len(classes)]
            args = (params, labels) if conditional else params
            if guided:
                model = samplers.guided(model_fn, scale, (params, jnp.full_like(labels, null_label)),
                                        batch_axes=(None, 0), channel_mask=guidance_mask)
            if classifier_fn is not None:
                model = samplers.classifier_guided(model, classifier_fn, classifier_scale, process=process,
                                                   prediction=prediction)
                args = (args, (classifier_params, labels))
        key = jax.vmap(lambda k: jax.random.fold_in(solver_key, k))(indices) if solver.stochastic else None
        x, _ = samplers.sample(model, solver, process, x, ts, prediction=prediction, key=key, args=args,
                               check_finite=False)
        if decode is not None:
            x = decode(decode_params, x)
        return x.astype(jnp.float32)

    replicated = features.sharding(mesh, False)
    return jax.jit(draw, in_shardings=(replicated, batch_sharding) + (replicated,) * 9, out_shardings=batch_sharding)


def sample_batch(plan: Plan, indices: np.ndarray) -> jax.Array:
    """The samples of the given indices (a device batch: `plan.batch` of them), float32 (n, *shape), sharded along
    the mesh's data axis: sample k from its own noise key (module docstring), whatever the batch it is drawn in."""
    target = plan.source.target
    (model_structure, model_leaves), (solver_structure, solver_leaves) = split(target.model_fn), split(plan.solver)
    classifier = plan.source.classifier
    program = _sample_program(model_structure, solver_structure, target.process, target.prediction,
                              tuple(target.shape), plan.source.classes, plan.source.null_label,
                              plan.guidance_scale != 1.0, bool(target.num_classes),
                              None if classifier is None else classifier.classifier_fn, plan.source.decode,
                              plan.source.guidance_mask, plan.mesh)
    return program(plan.params, jax.device_put(indices, features.sharding(plan.mesh, True)), plan.ts, plan.noise_key,
                   plan.solver_key, model_leaves, solver_leaves, plan.guidance_scale, plan.classifier_params,
                   plan.classifier_scale, plan.decode_params)


def _sample_batches(shard, plan, bar, kept, num_save):
    """The shard's samples, one padded device batch at a time, as (samples, number of real rows); the first
    `num_save` of them are appended to `kept` as uint8 images."""
    for start in range(shard.start, shard.stop, plan.batch):
        indices = np.arange(start, start + plan.batch, dtype=np.int32)  # rows past shard.stop: computed, dropped
        samples = sample_batch(plan, indices)
        n = min(plan.batch, shard.stop - start)
        if start - shard.start < num_save:
            kept.append(np.asarray(features.quantise(samples))[:min(n, num_save - (start - shard.start))])
        yield samples, n
        bar.update(n)


def _score_shard(shard, plan, config, bar, workdir):
    """The `FeatureStats` of one shard's samples; the first `num_save` uint8 samples of shard 0 go to
    WORKDIR/samples.npz and samples.png."""
    kept = []
    num_save = config.num_save if shard.index == 0 else 0
    stats = features.stream_stats(plan.feature, _sample_batches(shard, plan, bar, kept, num_save), plan.batch,
                                  plan.mesh)
    if stats.num_nonfinite and not config.allow_nonfinite:
        raise FloatingPointError(
            f"shard {shard.index}: {stats.num_nonfinite} of samples {shard.start}..{shard.stop} are not finite "
            f"({plan.solver.name} at NFE {plan.nfe} on the {plan.grid} grid diverged); set allow_nonfinite=True to "
            "count them and leave them out instead")
    if kept:
        images = np.concatenate(kept)
        core.write_npz(os.path.join(workdir, "samples.npz"), {"images": images})
        save_samples(images.astype(np.float32) / 127.5 - 1.0, os.path.join(workdir, "samples.png"))
    return stats


def write_shard(plan, shard, stats):
    """The shard's statistics, atomically, in the run's shard store."""
    plan.shards.write(shard.name, stats.arrays(), {"start": shard.start, "stop": shard.stop})


def read_shard(plan, shard):
    """The saved `FeatureStats` of a shard, or None when it is still to be sampled (absent, or the last shard of a
    run with fewer samples); ValueError for a shard of another run."""
    entry = plan.shards.read(shard.name)
    if entry is None or (entry.record.get("start"), entry.record.get("stop")) != (shard.start, shard.stop):
        return None  # the same run with another num_samples: this shard is sampled again, whole
    return FeatureStats.from_arrays(entry.arrays)


def write_final(plan, total):
    """WORKDIR/sample_stats.npz: mu, sigma and count (pytorch-fid's layout, for other tools) and the exact
    statistics, so that a finished run needs no shard files to be scored again."""
    plan.final.write(FINAL, {"mu": total.mean, "sigma": total.covariance, **total.arrays()})


def read_final(plan, num_samples):
    """The `FeatureStats` of a finished run of this plan with num_samples samples, or None; ValueError for another
    run's."""
    entry = plan.final.read(FINAL)
    if entry is None:
        return None
    total = FeatureStats.from_arrays(entry.arrays)
    return total if total.num_samples == num_samples else None  # another num_samples: sampled again


# ---------------------------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Sample, featurise and score one solver x grid x NFE cell; resumes from WORKDIR.

    Args:
      config: a ConfigDict with the keys of `experiments/configs/fid_pretrained.py`.
      workdir: a directory (created if missing) for the shards and results (see the module docstring).

    Returns:
      The content of results.json on process 0 (the other processes of a multi-host run return None): "metric"
      ("fid", or "fd_random_projection" for the test feature) and "value"; "num_samples" (drawn), "num_nonfinite"
      (left out); "source", "checkpoint" (the source's record: for a published checkpoint its path, layout, load
      options, SHA-256 of each file and of all), "model", "solver", "grid", "ts", "nfe" (budget, steps, per sample,
      and network calls per sample), "guidance", "seeds", "feature", "reference" (path, kind, SHA-256, count),
      "quantisation", "sharding", "resumed_shards", "reused_final_statistics" (a finished run scored again),
      "sampled_this_run", "wall_s", "sampling_s" and "samples_per_s" (this run's samples over its sampling time,
      compiling included), "fingerprint", "versions", "config", and "rows" (one row for scripts/make_table.py)
      with "description".

    Raises:
      ValueError, FileNotFoundError: a bad name, NFE, file, reference or option, before any sampling.
      FloatingPointError: a non-finite sample (unless allow_nonfinite).
    """
    from tqdm import tqdm

    start_time = time.perf_counter()
    plan = make_plan(config, workdir)
    process, process_count = jax.process_index(), jax.process_count()
    all_shards = shards(config.num_samples, config.shard_size)
    owned = [s for s in all_shards if s.index % process_count == process]
    final = read_final(plan, config.num_samples) if process == 0 else None
    complete = _broadcast_flag(final is not None)  # a finished run: nothing to sample, on any process
    done = {} if complete else {s.index: read_shard(plan, s) for s in owned}
    done = {k: v for k, v in done.items() if v is not None}
    if process == 0:
        core.write_json(os.path.join(workdir, "run.json"),
                        {"identity": plan.shards.identity, "fingerprint": plan.shards.fingerprint}, indent=2)
        # The reference before the samples: a bad image folder fails now, not after hours of sampling.
        reference, reference_record = references.load(plan.reference, plan.feature, batch_size=plan.batch,
                                                       cache_dir=os.path.join(workdir, "reference_stats"),
                                                       mesh=plan.mesh)

    resumed = len(all_shards) if complete else len(done)
    todo = [] if complete else [s for s in owned if s.index not in done]
    bar = tqdm(total=sum(s.size for s in owned), initial=sum(s.size for s in owned if s not in todo),
               unit="sample", desc=f"{plan.label} {plan.grid} NFE {plan.nfe}", disable=process != 0,
               mininterval=1.0, dynamic_ncols=True)
    sampling_start = time.perf_counter()
    sampled = 0
    for shard in todo:
        stats = _score_shard(shard, plan, config, bar, workdir)
        write_shard(plan, shard, stats)
        done[shard.index] = stats
        sampled += shard.size
    bar.close()
    sampling_s = time.perf_counter() - sampling_start

    if complete:
        total = final
    else:
        total = FeatureStats.empty(plan.feature.dim)
        for index in sorted(done):  # a fixed order: the statistics do not depend on which run computed which shard
            total = total.merge(done[index])
        total, sampled, resumed = _merge_over_processes(total, sampled, resumed)
    results = None
    if process == 0:
        if total.num_samples != config.num_samples:
            raise RuntimeError(f"the shards hold {total.num_samples} samples, expected {config.num_samples}")
        if not complete and total.count >= 2:
            write_final(plan, total)
        value = frechet_score(total, reference)
        if not math.isfinite(value):
            raise FloatingPointError(f"the Fréchet distance is {value} ({total.count} finite samples of "
                                     f"{total.num_samples}); stopping")
        results = _results(config, plan, value, total, reference_record, resumed, sampled, sampling_s,
                           time.perf_counter() - start_time, process_count)
        results["reused_final_statistics"] = complete
        core.write_json(os.path.join(workdir, "results.json"), results, indent=2)
        results = json.loads(json.dumps(results, default=core.atomic.jsonable))  # what the file holds
        name = "FID" if plan.feature.name == "inception" else f"FD ({plan.feature.name} features, not FID)"
        print(f"{name} {value:.4f}: {total.num_samples} samples, {plan.label}, {plan.grid} grid, NFE {plan.nfe}"
              + _guidance_text(plan) + (f", {total.num_nonfinite} non-finite left out" if total.num_nonfinite else "")
              + f" -> {os.path.join(workdir, 'results.json')}", flush=True)
    if not complete and not config.keep_shards:
        if process_count > 1:  # the shards go only once process 0 holds the final statistics
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fid_protocol: final statistics written")
        for shard in owned:
            plan.shards.remove(shard.name)
    return results


def _broadcast_flag(flag):
    """Process 0's boolean on every process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def _merge_over_processes(stats, sampled, resumed):
    """(statistics, samples drawn now, shards resumed) over every process: process_allgather of their float64 bits
    as uint32 (exact with or without x64), merged in process order."""
    if jax.process_count() == 1:
        return stats, sampled, resumed
    from jax.experimental import multihost_utils

    dim = stats.dim
    head = [stats.count, stats.num_nonfinite, sampled, resumed]
    packed = np.concatenate([np.asarray(head, np.float64), stats.mean, stats.m2.ravel()])
    gathered = np.asarray(multihost_utils.process_allgather(packed.view(np.uint32)))
    rows = np.ascontiguousarray(gathered).view(np.float64).reshape(jax.process_count(), packed.size)
    out = FeatureStats.empty(dim)
    k = len(head)
    for row in rows:
        out = out.merge(FeatureStats(int(row[0]), row[k:k + dim].copy(), row[k + dim:].reshape(dim, dim).copy(),
                                     int(row[1])))
    return out, int(rows[:, 2].sum()), int(rows[:, 3].sum())


def _results(config, plan, value, total, reference, resumed, sampled, sampling_s, wall_s, process_count):
    metric = plan.feature.metric
    network_calls = plan.nfe * (2 if plan.guidance_scale != 1.0 else 1)
    classifier = plan.source.classifier
    options = plan.identity["solver_options"]
    row = {"label": plan.label, "solver": config.solver, "options": options, "grid": plan.grid,
           "nfe_budget": int(config.nfe), "num_steps": plan.num_steps, "nfe": plan.nfe, "metric": metric,
           "value": value, "num_samples": total.num_samples, "num_nonfinite": total.num_nonfinite,
           "seconds": wall_s}
    source, target = plan.source, plan.source.target
    return {
        "metric": metric,
        "value": value,
        "num_samples": total.num_samples,
        "num_nonfinite": total.num_nonfinite,
        "source": config.source,
        "checkpoint": source.record,
        "model": {"process": target.process.name, "prediction": target.prediction,
                  "image_shape": list(plan.source.images), "num_classes": target.num_classes or None,
                  "latent_shape": list(target.shape) if plan.source.decode is not None else None,
                  "null_label": source.null_label},
        "solver": {"name": config.solver, "options": options, "label": plan.label,
                   "order": getattr(plan.solver, "order", None), "stochastic": plan.solver.stochastic},
        "grid": {"name": plan.grid, "options": config.grid_options.to_dict(), "t_min": config.t_min,
                 "t_max": config.t_max},
        "ts": plan.identity["ts"],
        "nfe": {"budget": int(config.nfe), "num_steps": plan.num_steps, "per_sample": plan.nfe,
                "network_calls_per_sample": network_calls},
        "guidance": {"scale": plan.guidance_scale, "null_label": source.null_label,
                     "labels": None if source.classes is None else "sample k: classes[k % len(classes)]",
                     "classes": source.classes,
                     "classifier": None if classifier is None else {
                         "path": source.record["classifier"]["path"], "scale": plan.classifier_scale,
                         "gradients_per_sample": plan.nfe}},
        "seeds": {"seed": config.seed,
                  "noise": f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {NOISE_STREAM}), k)",
                  "solver": (f"sample k: fold_in(fold_in(PRNGKey({config.seed}), {SOLVER_STREAM}), k)"
                             if plan.solver.stochastic else None)},
        "feature": plan.feature.record,
        "reference": reference,
        "quantisation": {"uint8": "round(clip((x + 1) * 127.5, 0, 255)); features of uint8 / 127.5 - 1",
                         "clip": "clip(x, -1, 1)", "float": "none"}[plan.feature.input],
        "sharding": {"processes": process_count, "devices_per_process": int(plan.mesh.devices.size),
                     "device_batch": plan.batch, "shard_size": config.shard_size,
                     "num_shards": len(shards(config.num_samples, config.shard_size))},
        "resumed_shards": resumed,
        "sampled_this_run": sampled,
        "wall_s": wall_s,
        "sampling_s": sampling_s,
        "samples_per_s": sampled / sampling_s if sampled and sampling_s > 0 else None,
        "fingerprint": plan.shards.fingerprint,
        "versions": versions(),
        "config": config.to_dict(),
        "description": f"{target.description}: {'FID' if metric == 'fid' else metric}, {total.num_samples} samples"
                       + _guidance_text(plan),
        "rows": [row],
    }


def _guidance_text(plan):
    return ((f", guidance {plan.guidance_scale:g}" if plan.guidance_scale != 1.0 else "")
            + (f", classifier guidance {plan.classifier_scale:g}" if plan.source.classifier is not None else ""))
